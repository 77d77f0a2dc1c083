import { afterAll, beforeAll } from "vitest";
import { startFakeModel, type FakeModel } from "../fake-model/server.ts";
import { startConductor, type Conductor, type ConductorOptions } from "../harness.ts";

/** What a suite's Conductor runs against; read inside tests (set once beforeAll has run). */
export interface ConductorSetup {
  readonly model: FakeModel;
  readonly conductor: Conductor;
}

/**
 * Starts a fake model and a Conductor pointed at it before the enclosing describe block's
 * tests, and closes both after them. `options` is called then (it may prepare files).
 */
export function useConductor(options: () => Omit<ConductorOptions, "modelUrl">): ConductorSetup {
  let model: FakeModel | undefined;
  let conductor: Conductor | undefined;
  beforeAll(async () => {
    model = await startFakeModel();
    conductor = await startConductor({ ...options(), modelUrl: model.url });
  });
  afterAll(async () => {
    await conductor?.close();
    await model?.close();
  });
  const started = <T>(value: T | undefined, what: string): T => {
    if (value === undefined) throw new Error(`the ${what} is not started: use it inside a test`);
    return value;
  };
  return {
    get model() {
      return started(model, "fake model");
    },
    get conductor() {
      return started(conductor, "Conductor");
    },
  };
}
