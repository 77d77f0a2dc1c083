import { closeSync, constants, openSync, readSync } from "node:fs";

const MAX_RECORDS = 200_000;

/**
 * Whether the kernel log holds an OOM kill in this container's memory cgroup. Podman 4
 * never sets State.OOMKilled (conmon's OOM file is not read back before Podman 5), so the
 * podman backend asks the kernel instead: the memcg OOM report names the cgroup, which
 * holds the container id ("oom_memcg=/libpod_parent/libpod-<id>"). False when the log
 * cannot be read (rootless, dmesg_restrict) or has rotated past the event.
 */
export function oomKilledInKernelLog(containerId: string, kmsgPath = "/dev/kmsg"): boolean {
  let fd: number;
  try {
    fd = openSync(kmsgPath, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch {
    return false;
  }
  const buf = Buffer.alloc(8192);
  try {
    // /dev/kmsg hands out one record per read and EAGAIN at the end.
    for (let i = 0; i < MAX_RECORDS; i++) {
      let n: number;
      try {
        n = readSync(fd, buf, 0, buf.length, null);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === "EPIPE") continue; // records overwritten while reading: go on
        return false; // EAGAIN: the end; anything else: unreadable
      }
      if (n === 0) return false;
      const rec = buf.toString("utf8", 0, n);
      if (rec.includes(containerId) && /oom|out of memory/i.test(rec)) return true;
    }
    return false;
  } finally {
    closeSync(fd);
  }
}
