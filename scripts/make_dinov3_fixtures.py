#!/usr/bin/env python3
"""Reference outputs for roadwork's DINOv3 parity tests, from transformers' DINOv3ViTModel itself.

Writes tests/fixtures/dinov3/:
  plain.safetensors   weights of a tiny random config with a plain GELU MLP
  gated.safetensors   weights of a tiny random config with a gated SiLU (SwiGLU) MLP
  <name>.io.safetensors  pixel_values [2,3,32,48], last_hidden_state, pooler_output
  configs.json        the two configs
  preprocess.png      a 97x61 test image (deterministic)
  preprocess.safetensors  torchvision antialiased bilinear resize of it (uint8, 40x56 and 24x24) and the
                      DINOv3 image processor's pixel_values at 64x64

Run: python3 scripts/make_dinov3_fixtures.py   (torch, torchvision, transformers, safetensors, pillow)
Checked with torch 2.11 / transformers 5.x. Re-running rewrites the same files for the same versions.
"""
import json
import pathlib

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F
from transformers import DINOv3ViTConfig, DINOv3ViTImageProcessorFast, DINOv3ViTModel

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "dinov3"
OUT.mkdir(parents=True, exist_ok=True)

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            num_register_tokens=4, patch_size=16, image_size=32)
CONFIGS = {
    "plain": dict(TINY, hidden_act="gelu", use_gated_mlp=False),
    "gated": dict(TINY, hidden_act="silu", use_gated_mlp=True),
}


def model_fixture(name: str, cfg: dict, seed: int) -> None:
    torch.manual_seed(seed)
    model = DINOv3ViTModel(DINOv3ViTConfig(**cfg)).eval()
    # Non-trivial LayerScale and norms so the parity test exercises them.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lambda1" in n or "norm" in n:
                p.add_(0.1 * torch.randn_like(p))
    pixels = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        out = model(pixel_values=pixels)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, OUT / f"{name}.safetensors")
    save_file({"pixel_values": pixels, "last_hidden_state": out.last_hidden_state.contiguous(),
               "pooler_output": out.pooler_output.contiguous()}, OUT / f"{name}.io.safetensors")


def preprocess_fixture() -> None:
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:61, 0:97]
    img = np.stack([(x * 2.6) % 256, (y * 4.1 + x) % 256, 128 + 60 * np.sin(x / 5.0 + y / 7.0)], -1)
    img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(OUT / "preprocess.png")
    t = torch.from_numpy(img).permute(2, 0, 1).contiguous()
    tensors = {}
    for h, w in [(40, 56), (24, 24)]:
        r = F.resize(t, [h, w], interpolation=InterpolationMode.BILINEAR, antialias=True)
        tensors[f"resize_{h}x{w}"] = r.contiguous()
    proc = DINOv3ViTImageProcessorFast(size={"height": 64, "width": 64})
    pv = proc(images=Image.fromarray(img), return_tensors="pt").pixel_values
    tensors["processor_64"] = pv[0].contiguous()
    save_file(tensors, OUT / "preprocess.safetensors")


if __name__ == "__main__":
    for i, (name, cfg) in enumerate(CONFIGS.items()):
        model_fixture(name, cfg, seed=100 + i)
    (OUT / "configs.json").write_text(json.dumps(CONFIGS, indent=2, sort_keys=True) + "\n")
    preprocess_fixture()
    for p in sorted(OUT.iterdir()):
        print(f"{p.name:28s} {p.stat().st_size:8d} bytes")
