import { describe, expect, it } from "vitest";
import { ROOTFUL_PODMAN_SOCKET, podmanSocketPath } from "./index.ts";

describe("podmanSocketPath", () => {
  it("takes the configured socket first", () => {
    expect(
      podmanSocketPath({ socketPath: "/x.sock", uid: 1000, xdgRuntimeDir: "/run/user/1000" }),
    ).toBe("/x.sock");
  });
  it("uses rootful Podman for uid 0, even with XDG_RUNTIME_DIR set", () => {
    expect(podmanSocketPath({ uid: 0, xdgRuntimeDir: "/run/user/0" })).toBe(ROOTFUL_PODMAN_SOCKET);
    expect(podmanSocketPath({})).toBe(ROOTFUL_PODMAN_SOCKET);
  });
  it("finds rootless Podman under XDG_RUNTIME_DIR, else /run/user/<uid>", () => {
    expect(podmanSocketPath({ uid: 1000, xdgRuntimeDir: "/tmp/xdg" })).toBe(
      "/tmp/xdg/podman/podman.sock",
    );
    expect(podmanSocketPath({ uid: 1000 })).toBe("/run/user/1000/podman/podman.sock");
  });
});
