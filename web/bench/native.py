"""The benchmark's native section: the full-size SD1.5-shaped U-Net, one call at batch 2 (CFG's pair)
on 32x32 and 64x64 latents, diffusers' torch on CPU against websd on the Flex CPU device, alternating
call by call in one session on the same weights and inputs (outputs compared).

    python native.py <sd15 dir> <unet_io_check binary> <reps> <work dir>   (prints JSON)

Run with the oracle venv's python (../shared/oracle); run.ts --only native calls it.
"""

import json
import os
import subprocess
import sys
import time

import numpy as np
import torch
from diffusers import UNet2DConditionModel

model, binary, reps, work = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
torch.set_num_threads(os.cpu_count())
unet = UNet2DConditionModel.from_pretrained(os.path.join(model, "unet"), variant="fp16", torch_dtype=torch.float32).eval()
ours = subprocess.Popen([binary, model, "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
assert ours.stdout.readline().strip() == "ready"

sections = []
for size in (32, 64):
    g = torch.Generator().manual_seed(size)
    sample = torch.randn(2, 4, size, size, generator=g)
    ehs = torch.randn(2, 77, 768, generator=g)
    t = torch.tensor([981.0])
    io = os.path.join(work, f"io{size}")
    os.makedirs(io, exist_ok=True)
    np.save(os.path.join(io, "io_sample.npy"), sample.numpy())
    np.save(os.path.join(io, "io_timestep.npy"), t.numpy())
    np.save(os.path.join(io, "io_encoder_hidden_states.npy"), ehs.numpy())
    rows = {"torch": [], "websd": []}
    diffs = []
    out = os.path.join(io, "torch_out.npy")
    for rep in range(reps + 1):
        t0 = time.perf_counter()
        with torch.no_grad():
            y = unet(sample, t, encoder_hidden_states=ehs).sample
        rows["torch"].append((time.perf_counter() - t0) * 1e3)
        if rep == 0:
            np.save(out, y.numpy())
        ours.stdin.write(f"{io} {out}\n")
        ours.stdin.flush()
        _, ms, _, diff = ours.stdout.readline().split()
        rows["websd"].append(float(ms))
        diffs.append(float(diff))
        print(f"{size}x{size} round {rep}: torch {rows['torch'][-1]:.0f} ms, websd {rows['websd'][-1]:.0f} ms", file=sys.stderr)
    sections.append(
        {
            "latents": f"[2, 4, {size}, {size}]",
            # The first call of each is a warm-up (allocations, thread pools), reported apart.
            "torch": {"firstMs": rows["torch"][0], "medianMs": float(np.median(rows["torch"][1:])), "ms": rows["torch"][1:]},
            "websd": {"firstMs": rows["websd"][0], "medianMs": float(np.median(rows["websd"][1:])), "ms": rows["websd"][1:]},
            "maxAbsVsTorch": max(diffs),
        }
    )
ours.stdin.close()
ours.wait()
print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "sections": sections}))
