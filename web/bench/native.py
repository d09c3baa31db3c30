"""The benchmark's native section: the full-size SD1.5-shaped U-Net, one call at batch 2 (CFG's pair)
on 32x32 and 64x64 latents, diffusers' torch on CPU against websd on the Flex CPU device, alternating
call by call in one session on the same weights and inputs (outputs compared).

    python native.py <sd15 dir> <unet_io_check binary> <reps> <work dir> [options]   (prints JSON)

Run with the oracle venv's python (../shared/oracle); run.ts --only native calls it. The options run
the same comparison on a GPU machine: `--torch-device cuda --ours wgpu` (both in f32: TF32 is turned
off, as our f32 shaders have none), `--torch-dtype f16 --ours wgpu-f16` (both in f16), `--sizes`, and
`--variants burn,conv`: one websd process per `WEBSD_KERNELS` value (crate/src/kernels), all called in
turn beside torch; the first is reported as "websd", each under "variants".
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch
from diffusers import UNet2DConditionModel

cli = argparse.ArgumentParser()
cli.add_argument("model")
cli.add_argument("binary")
cli.add_argument("reps", type=int)
cli.add_argument("work")
cli.add_argument("--torch-device", default="cpu", choices=["cpu", "cuda"])
cli.add_argument("--torch-dtype", default="f32", choices=["f32", "f16"])
cli.add_argument("--ours", default="cpu", choices=["cpu", "wgpu", "wgpu-f16"])
cli.add_argument("--sizes", default="32,64")
cli.add_argument("--variants", default="", help="comma list of WEBSD_KERNELS values, one websd process each")
args = cli.parse_args()
model, binary, reps, work = args.model, args.binary, args.reps, args.work
dev = torch.device(args.torch_device)
dtype = torch.float16 if args.torch_dtype == "f16" else torch.float32
torch.set_num_threads(os.cpu_count())
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
unet = UNet2DConditionModel.from_pretrained(os.path.join(model, "unet"), variant="fp16", torch_dtype=dtype).to(dev).eval()
variants = args.variants.split(",") if args.variants else [None]


def serve(variant):
    env = dict(os.environ)
    if variant is not None:
        env["WEBSD_KERNELS"] = variant
    cmd = [binary, model, "--serve", args.ours]
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)


servers = {v: serve(v) for v in variants}
for server in servers.values():
    assert server.stdout.readline().strip() == "ready"


def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()


sections = []
for size in map(int, args.sizes.split(",")):
    g = torch.Generator().manual_seed(size)
    sample = torch.randn(2, unet.config.in_channels, size, size, generator=g)
    ehs = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    t = torch.tensor([981.0])
    io = os.path.join(work, f"io{size}")
    os.makedirs(io, exist_ok=True)
    np.save(os.path.join(io, "io_sample.npy"), sample.numpy())
    np.save(os.path.join(io, "io_timestep.npy"), t.numpy())
    np.save(os.path.join(io, "io_encoder_hidden_states.npy"), ehs.numpy())
    rows = {"torch": [], **{v: [] for v in variants}}
    diffs = {v: [] for v in variants}
    out = os.path.join(io, "torch_out.npy")
    x, e = sample.to(dev, dtype), ehs.to(dev, dtype)
    for rep in range(reps + 1):
        sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            y = unet(x, t.to(dev), encoder_hidden_states=e).sample
        sync()
        rows["torch"].append((time.perf_counter() - t0) * 1e3)
        if rep == 0:
            np.save(out, y.float().cpu().numpy())
        for v, server in servers.items():
            server.stdin.write(f"{io} {out}\n")
            server.stdin.flush()
            _, ms, _, diff = server.stdout.readline().split()
            rows[v].append(float(ms))
            diffs[v].append(float(diff))
        ours = ", ".join(f"websd {v or ''} {rows[v][-1]:.0f} ms" for v in variants)
        print(f"{size}x{size} round {rep}: torch {rows['torch'][-1]:.0f} ms, {ours}", file=sys.stderr)

    # The first call of each is a warm-up (allocations, thread pools, autotune), reported apart.
    def timing(ms):
        return {"firstMs": ms[0], "medianMs": float(np.median(ms[1:])), "ms": ms[1:]}

    first = variants[0]
    section = {
        "latents": f"[2, 4, {size}, {size}]",
        "torch": timing(rows["torch"]),
        "websd": timing(rows[first]),
        "maxAbsVsTorch": max(diffs[first]),
    }
    if args.variants:
        section["variants"] = {v: {**timing(rows[v]), "maxAbsVsTorch": max(diffs[v])} for v in variants}
    sections.append(section)
    print(json.dumps(section), file=sys.stderr)
for server in servers.values():
    server.stdin.close()
    server.wait()
setup = {"torchDevice": args.torch_device, "torchDtype": args.torch_dtype, "ours": args.ours}
if args.variants:
    setup["convWorkgroups"] = os.environ.get("WEBSD_CONV_WORKGROUPS", "")
if dev.type == "cuda":
    setup["gpu"] = torch.cuda.get_device_name()
print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), **setup, "sections": sections}))
