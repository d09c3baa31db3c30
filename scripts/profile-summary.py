"""Sums cubecl's kernel profile (CUBECL_DEBUG_OPTION=profile, CUBECL_DEBUG_LOG=FILE) by kernel name and
prints the top kernels by total time: `python3 scripts/profile-summary.py FILE [top, default 10]`."""

import collections
import re
import sys

UNIT_MS = {"ns": 1e-6, "µs": 1e-3, "ms": 1.0, "s": 1e3}
total, launches = collections.Counter(), collections.Counter()
for line in open(sys.argv[1], errors="replace"):
    m = re.match(r"^\| ([\d.]+)(ns|µs|ms|s)\s+\| (.*)$", line)
    if not m:
        continue
    # Kernel names end in a hash of their comptime settings: one row per kernel, whatever the shape.
    name = re.sub(r"_[0-9a-f]{8}", "", m.group(3)).strip()
    total[name] += float(m.group(1)) * UNIT_MS[m.group(2)]
    launches[name] += 1
top = int(sys.argv[2]) if len(sys.argv) > 2 else 10
print(f"total {sum(total.values()):.0f} ms over {sum(launches.values())} launches")
print("| kernel | ms | launches | ms / launch |\n|---|---|---|---|")
for name, ms in total.most_common(top):
    print(f"| {name[:80]} | {ms:.1f} | {launches[name]} | {ms / launches[name]:.2f} |")
