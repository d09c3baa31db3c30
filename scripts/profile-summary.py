"""Sums cubecl's kernel profile (CUBECL_DEBUG_OPTION=profile, CUBECL_DEBUG_LOG=FILE) by kernel name and
prints the top kernels by total time: `python3 scripts/profile-summary.py FILE [top, default 10]
[--warm CALLS]`. With `--warm`, for a run that repeats one call (`tiny_profile ... unet`), only one
warm call: the period of the launch sequence that tiles the last CALLS calls, averaged over them."""

import collections
import re
import sys

UNIT_MS = {"ns": 1e-6, "µs": 1e-3, "ms": 1.0, "s": 1e3}
args = sys.argv[1:]
calls = 1
if "--warm" in args:
    i = args.index("--warm")
    calls = int(args[i + 1])
    del args[i : i + 2]
launches = []
for line in open(args[0], errors="replace"):
    m = re.match(r"^\| ([\d.]+)(ns|µs|ms|s)\s+\| (.*)$", line)
    if m:
        # Kernel names end in a hash of their comptime settings: one row per kernel, whatever the shape.
        launches.append((float(m.group(1)) * UNIT_MS[m.group(2)], re.sub(r"_[0-9a-f]{8}", "", m.group(3)).strip()))
top = int(args[1]) if len(args) > 1 else 10
if calls > 1:
    names = [n for _, n in launches]
    # The shortest period that tiles all of the last `calls` calls (a call may repeat a block inside it).
    period = next(
        (
            k
            for k in range(1, len(names) // (calls + 1) + 1)
            if all(names[len(names) - (j + 1) * k : len(names) - j * k] == names[-k:] for j in range(1, calls))
        ),
        None,
    )
    if period is None:
        sys.exit(f"no launch sequence repeats {calls} times at the end of {args[0]} (a log cut short?)")
    launches = launches[-calls * period :]
total, count = collections.Counter(), collections.Counter()
for ms, name in launches:
    total[name] += ms / calls
    count[name] += 1 / calls
what = "one warm call" if calls > 1 else "total"
print(f"{what}: {sum(total.values()):.1f} ms over {sum(count.values()):.0f} launches")
print("| kernel | ms | launches | ms / launch |\n|---|---|---|---|")
for name, ms in total.most_common(top):
    print(f"| {name[:80]} | {ms:.1f} | {count[name]:.0f} | {ms / count[name]:.3f} |")
