// CPU time and freshly touched memory of Chromium's processes, from Linux's /proc: what the memory
// section's plain read and load cost each process (empty where /proc is missing).
import { readFileSync, readdirSync } from "node:fs";

/** Per process kind (browser, renderer, gpu-process, utility): CPU seconds and GiB of minor page
 * faults (pages touched for the first time, zero-filled by the kernel). */
export type ProcessUsage = Record<string, { cpuS: number; faultedGiB: number }>;

const PAGE = 4096;
const TICKS = 100;

export function chromiumUsage(): ProcessUsage {
  const out: ProcessUsage = {};
  let pids: string[];
  try {
    pids = readdirSync("/proc").filter((d) => /^\d+$/.test(d));
  } catch {
    return out;
  }
  for (const pid of pids) {
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, "utf8");
      if (!/chrom/.test(cmd.split("\0")[0] ?? "")) continue;
      const kind = /--type=([a-z-]+)/.exec(cmd)?.[1] ?? "browser";
      if (kind === "zygote") continue;
      const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
      // Fields after the command name: state is 3rd; minflt 10th, utime 14th, stime 15th (man proc).
      const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      const u = (out[kind] ??= { cpuS: 0, faultedGiB: 0 });
      u.cpuS += (Number(f[11]) + Number(f[12])) / TICKS;
      u.faultedGiB += (Number(f[7]) * PAGE) / 2 ** 30;
    } catch {
      // The process ended between the listing and the read.
    }
  }
  return out;
}

/** What each process kind used between two snapshots (kinds that used nothing left out). */
export function usageSince(before: ProcessUsage, after: ProcessUsage): ProcessUsage {
  const out: ProcessUsage = {};
  for (const [kind, a] of Object.entries(after)) {
    const b = before[kind] ?? { cpuS: 0, faultedGiB: 0 };
    const d = { cpuS: a.cpuS - b.cpuS, faultedGiB: a.faultedGiB - b.faultedGiB };
    if (d.cpuS >= 0.05 || d.faultedGiB >= 0.01) out[kind] = d;
  }
  return out;
}

export function formatUsage(u: ProcessUsage): string {
  const kinds = Object.keys(u).sort();
  return kinds.length
    ? kinds.map((k) => `${k} ${u[k]!.cpuS.toFixed(1)} s, ${u[k]!.faultedGiB.toFixed(1)} GiB`).join("; ")
    : "not measured (no /proc)";
}
