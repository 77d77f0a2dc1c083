import { describe, expect, it } from "vitest";
import type Docker from "dockerode";
import { LABEL_AGENT, LABEL_HOST, LABEL_NODE } from "../runtime.ts";
import type { SandboxSpec } from "../runtime.ts";
import {
  INFRA_USER,
  LABEL_USER,
  checkUser,
  containerName,
  createOptions,
  statusOf,
} from "./container-spec.ts";
import { socketFromDockerHost } from "./index.ts";

const spec: SandboxSpec = {
  nodeId: "node-1",
  agentId: "agent/7",
  image: "conductor-agent:dev",
  mounts: [
    { hostPath: "/work/ws" },
    { hostPath: "/run/sock", readOnly: true },
    { hostPath: "/data/agents/a/task", sandboxPath: "/data/worktrees" },
  ],
  env: { A: "1" },
  labels: { team: "x" },
  limits: { memoryBytes: 512 * 2 ** 20, cpus: 1.5, pids: 100, ulimits: { nofile: 2048 } },
  network: "",
  user: "1000:1000",
};

describe("createOptions", () => {
  it("maps the spec onto the Docker API with every isolation setting", () => {
    const o = createOptions(spec, "localhost/conductor-agent:dev", {
      init: true,
      tmpfs: ["/tmp", "/home/agent"],
      defaultUlimits: { nofile: 1024, nproc: 1024 },
    });
    expect(o.name).toBe("conductor-node-1-agent_7");
    expect(o.Labels).toEqual({
      team: "x",
      [LABEL_NODE]: "node-1",
      [LABEL_AGENT]: "agent/7",
      [LABEL_USER]: "1000:1000",
    });
    // The main process is nobody's; runs are exec'd as the spec's user.
    expect(o.User).toBe(INFRA_USER);
    expect(o.Env).toEqual(["A=1"]);
    expect(o.HostConfig).toMatchObject({
      Mounts: [
        { Type: "bind", Source: "/work/ws", Target: "/work/ws", ReadOnly: false },
        { Type: "bind", Source: "/run/sock", Target: "/run/sock", ReadOnly: true },
        { Type: "bind", Source: "/data/agents/a/task", Target: "/data/worktrees", ReadOnly: false },
      ],
      Memory: 512 * 2 ** 20,
      MemorySwap: 512 * 2 ** 20,
      NanoCpus: 1_500_000_000,
      PidsLimit: 100,
      // The spec's value wins over the default of the same name.
      Ulimits: [
        { Name: "nofile", Soft: 2048, Hard: 2048 },
        { Name: "nproc", Soft: 1024, Hard: 1024 },
      ],
      CapDrop: ["ALL"],
      SecurityOpt: ["no-new-privileges"],
      ReadonlyRootfs: true,
      NetworkMode: "none",
      Init: true,
    });
    expect(Object.keys(o.HostConfig?.Tmpfs ?? {})).toEqual(["/tmp", "/home/agent"]);
  });

  it("leaves unset limits to the engine", () => {
    const o = createOptions({ ...spec, limits: {} }, "i", {
      init: false,
      tmpfs: [],
      defaultUlimits: {},
    });
    expect(o.HostConfig).not.toHaveProperty("Memory");
    expect(o.HostConfig).not.toHaveProperty("NanoCpus");
    expect(o.HostConfig).not.toHaveProperty("PidsLimit");
  });
});

describe("checkUser / containerName / socketFromDockerHost", () => {
  it("refuses root and an empty user", () => {
    for (const u of ["", "0", "0:0", "root", "root:root"])
      expect(() => checkUser(u)).toThrow(/never run as root/);
    expect(() => checkUser("1000:1000")).not.toThrow();
  });
  it("makes names the engine accepts", () => {
    expect(containerName({ ...spec, nodeId: "a b", agentId: "c:d" })).toBe("conductor-a_b-c_d");
  });
  it("names the AgentHost instance, so two on one engine never collide", () => {
    const of = (host: string) =>
      containerName({ ...spec, agentId: "agent-1", labels: { [LABEL_HOST]: host } });
    expect(of("0123456789abcdef")).toBe("conductor-node-1-0123456789ab-agent-1");
    expect(of("fedcba9876543210")).not.toBe(of("0123456789abcdef"));
  });
  it("reads unix:// DOCKER_HOST values and refuses others", () => {
    expect(socketFromDockerHost(undefined)).toBeUndefined();
    expect(socketFromDockerHost("unix:///run/d.sock")).toBe("/run/d.sock");
    expect(() => socketFromDockerHost("tcp://127.0.0.1:2375")).toThrow(/unix:\/\//);
  });
});

describe("statusOf", () => {
  const info = (state: Partial<Docker.ContainerInspectInfo["State"]>) =>
    ({
      State: {
        Running: false,
        OOMKilled: false,
        ExitCode: 0,
        Status: "exited",
        Error: "",
        ...state,
      },
      Config: { Labels: { a: "b" }, User: "1000:1000" },
      HostConfig: {
        Memory: 1024,
        NanoCpus: 500_000_000,
        PidsLimit: 0,
        NetworkMode: "none",
        ReadonlyRootfs: true,
        CapDrop: ["ALL"],
        SecurityOpt: ["no-new-privileges:true"],
      },
    }) as unknown as Docker.ContainerInspectInfo;

  it("names why a container stopped", () => {
    expect(statusOf(info({ OOMKilled: true, ExitCode: 137 })).reason).toBe("out of memory");
    expect(statusOf(info({ ExitCode: 137 })).reason).toBe("killed");
    expect(statusOf(info({ ExitCode: 3 })).reason).toBe("exited with code 3");
    expect(statusOf(info({ Running: true })).reason).toBeUndefined();
  });

  it("reads limits and isolation back", () => {
    expect(statusOf(info({ Running: true }))).toEqual({
      running: true,
      oomKilled: false,
      limits: { memoryBytes: 1024, cpus: 0.5 },
      labels: { a: "b" },
      user: "1000:1000",
      network: "none",
      readOnlyRootfs: true,
      capDrop: ["ALL"],
      noNewPrivileges: true,
    });
  });
});
