"""The benchmark's larger U-Net: SD 1.5's block structure (4 levels, cross-attention in the first three and
the mid block, 2 layers per block, 8 heads) at 1/10 of its width, random weights (seed 0), in a copy of
the tiny pipeline (whose text encoder, 32 wide, it is conditioned on). Writes a diffusers folder, its
ONNX export (opset 17, the exporter the fixtures used) and torch's output for the fixtures' inputs.

Run with the oracle venv (../shared/oracle): python make_sd_shaped.py TINY_SD_DIR ONNX_IO_DIR OUT_DIR
"""
import copy, shutil, sys, os
import numpy as np, torch
from diffusers import UNet2DConditionModel

tiny, io_dir, out = sys.argv[1:4]
torch.manual_seed(0)
torch.set_num_threads(2)
if os.path.exists(out):
    shutil.rmtree(out)
shutil.copytree(tiny, out, ignore=shutil.ignore_patterns("unet"))
unet = UNet2DConditionModel(
    sample_size=32,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(32, 64, 128, 128),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=8,
    norm_num_groups=32,
).eval()
# Random init leaves the output convs at zero in some diffusers versions: perturb every parameter so the
# comparison between engines means something.
with torch.no_grad():
    for p in unet.parameters():
        p.add_(torch.randn_like(p) * 0.02)
unet.save_pretrained(f"{out}/unet", safe_serialization=True)
# A copy for the fp16 file: .half() in place would leave the reference below computed with fp16-rounded
# weights, not the fp32 file's.
copy.deepcopy(unet).half().save_pretrained(f"{out}/unet", safe_serialization=True, variant="fp16")
print("parameters:", sum(p.numel() for p in unet.parameters()))

class Wrap(torch.nn.Module):
    def __init__(self, u):
        super().__init__()
        self.u = u

    def forward(self, sample, timestep, encoder_hidden_states):
        return self.u(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]

sample = torch.from_numpy(np.load(f"{io_dir}/io_sample.npy"))
timestep = torch.from_numpy(np.load(f"{io_dir}/io_timestep.npy"))
ehs = torch.from_numpy(np.load(f"{io_dir}/io_encoder_hidden_states.npy"))
w = Wrap(unet).eval()
with torch.no_grad():
    ref = w(sample, timestep, ehs).numpy()
np.save(f"{out}/io_torch_out.npy", ref)
torch.onnx.export(
    w, (sample, timestep, ehs), f"{out}/unet.onnx", dynamo=False, do_constant_folding=True, opset_version=17,
    input_names=["sample", "timestep", "encoder_hidden_states"], output_names=["out_sample"],
)
print("wrote", out, "output std", float(ref.std()))
