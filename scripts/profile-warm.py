"""The kernels of one warm call from cubecl's kernel profile (CUBECL_DEBUG_OPTION=profile,
CUBECL_DEBUG_LOG=FILE) of a run that repeats the same call (`tiny_profile ... unet`): finds the
period of the launch sequence at the end of the file and averages the last `calls` periods:
`python3 scripts/profile-warm.py FILE [top, default 12] [calls, default 5]`."""

import collections
import re
import sys

UNIT_MS = {"ns": 1e-6, "µs": 1e-3, "ms": 1.0, "s": 1e3}
launches = []
for line in open(sys.argv[1], errors="replace"):
    m = re.match(r"^\| ([\d.]+)(ns|µs|ms|s)\s+\| (.*)$", line)
    if m:
        # Kernel names end in a hash of their comptime settings: one row per kernel, whatever the shape.
        launches.append((float(m.group(1)) * UNIT_MS[m.group(2)], re.sub(r"_[0-9a-f]{8}", "", m.group(3)).strip()))
top = int(sys.argv[2]) if len(sys.argv) > 2 else 12
calls = int(sys.argv[3]) if len(sys.argv) > 3 else 5
names = [n for _, n in launches]
# The shortest period that tiles all of the last `calls` calls (a call may repeat a block inside it).
period = next(
    k
    for k in range(1, len(names) // (calls + 1) + 1)
    if all(names[len(names) - (j + 1) * k : len(names) - j * k] == names[-k:] for j in range(1, calls))
)
total, count = collections.Counter(), collections.Counter()
for ms, name in launches[-calls * period :]:
    total[name] += ms / calls
    count[name] += 1 / calls
print(f"one call: {period} launches, {sum(total.values()):.1f} ms of kernel time")
print("| kernel | ms | launches | ms / launch |\n|---|---|---|---|")
for name, ms in total.most_common(top):
    print(f"| {name[:80]} | {ms:.1f} | {count[name]:.0f} | {ms / count[name]:.3f} |")
