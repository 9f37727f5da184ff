#!/usr/bin/env python3
"""End-to-end preprocessing fixtures: image files → transformers' DINOv3 image processor → the tiny
random DINOv3 models of make_dinov3_fixtures.py (their committed weights), for roadwork's test that
the whole path from a file matches the reference.

Writes tests/fixtures/dinov3/:
  e2e_<name>.png / e2e_<name>.jpg  small deterministic images of odd sizes (one JPEG, quality 90)
  e2e.safetensors   per image: pixels_<name> (the processor's pixel_values at 32×32, [3,32,32]),
                    pooler_<model>_<name> (pooler_output of the plain and gated models, [32]);
                    for the JPEG also decoded_<name> (PIL's decoded RGB, uint8 [H,W,3]) so the test
                    can report the JPEG decoder difference apart from the preprocessing

Run: python3 scripts/make_preprocess_fixtures.py   (torch, transformers, safetensors, pillow, numpy)
"""
import json
import pathlib

import numpy as np
import torch
import transformers
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import DINOv3ViTConfig, DINOv3ViTImageProcessorFast, DINOv3ViTModel

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "dinov3"
SIZES = {"wide": (61, 97), "tall": (77, 45), "strip": (33, 130), "photo": (64, 80)}


def picture(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([(x * 3.3 + y) % 256, (y * 5.1) % 256, 120 + 70 * np.sin(x / 4.0 + y / 9.0)], -1)
    return np.clip(img + rng.normal(0, 15, img.shape), 0, 255).astype(np.uint8)


def main() -> None:
    configs = json.loads((OUT / "configs.json").read_text())
    models = {}
    for name, cfg in configs.items():
        m = DINOv3ViTModel(DINOv3ViTConfig(**cfg)).eval()
        m.load_state_dict(load_file(OUT / f"{name}.safetensors"))
        models[name] = m
    proc = DINOv3ViTImageProcessorFast(size={"height": 32, "width": 32})
    tensors = {}
    for i, (stem, (h, w)) in enumerate(SIZES.items()):
        arr = picture(h, w, 10 + i)
        if stem == "photo":
            path = OUT / f"e2e_{stem}.jpg"
            Image.fromarray(arr).save(path, quality=90)
        else:
            path = OUT / f"e2e_{stem}.png"
            Image.fromarray(arr).save(path)
        img = Image.open(path).convert("RGB")
        if path.suffix == ".jpg":
            tensors[f"decoded_{stem}"] = torch.from_numpy(np.asarray(img).copy())
        pv = proc(images=img, return_tensors="pt").pixel_values
        tensors[f"pixels_{stem}"] = pv[0].contiguous()
        with torch.no_grad():
            for name, m in models.items():
                tensors[f"pooler_{name}_{stem}"] = m(pixel_values=pv).pooler_output[0].contiguous()
    save_file(tensors, OUT / "e2e.safetensors")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    for p in sorted(OUT.glob("e2e*")):
        print(f"{p.name:24s} {p.stat().st_size:8d} bytes")


if __name__ == "__main__":
    main()
