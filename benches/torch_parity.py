"""Reference outputs of transformers' DINOv3ViTModel on full-size random models, for parity checks of
roadwork's engines in the same run (`roadwork bench embed --device cuda --parity`).

Usage: python3 torch_parity.py --models vits16,vitl16 --out DIR [--size 224] [--images 2]
Writes DIR/<model>.safetensors (the state dict, Hugging Face names: what roadwork loads as real
weights) and DIR/<model>.io.safetensors (pixel_values, pooler_output, mean_patch), computed on the
CPU in float32 (no TF32), so the reference is exact f32.
"""
import argparse, copy, pathlib
import torch
from safetensors.torch import save_file
from transformers import DINOv3ViTConfig, DINOv3ViTModel

SIZES = {  # published DINOv3 ViT configs (patch 16, 4 register tokens)
    "vits16": dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=12, num_attention_heads=6),
    "vitb16": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
    "vitl16": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16),
}

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="vits16,vitl16")
    ap.add_argument("--out", required=True)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--images", type=int, default=2)
    a = ap.parse_args()
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(a.models.split(",")):
        torch.manual_seed(1000 + i)
        cfg = DINOv3ViTConfig(patch_size=16, num_register_tokens=4, image_size=a.size, **SIZES[name])
        model = DINOv3ViTModel(cfg).eval()
        # LayerScale and norms away from their init so the check exercises them.
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lambda1" in n or "norm" in n:
                    p.add_(0.1 * torch.randn_like(p))
        pixels = torch.randn(a.images, 3, a.size, a.size)
        with torch.inference_mode():
            o = model(pixel_values=pixels)
        prefix = 1 + cfg.num_register_tokens
        # PyTorch's own bf16 on the GPU, for scale: how far bf16 moves transformers itself.
        extra = {}
        if torch.cuda.is_available():
            mb = copy.deepcopy(model).to("cuda", torch.bfloat16)
            with torch.inference_mode():
                ob = mb(pixel_values=pixels.to("cuda", torch.bfloat16))
            extra = {"torch_bf16_pooler": ob.pooler_output.float().cpu().contiguous(),
                     "torch_bf16_mean": ob.last_hidden_state[:, prefix:].float().mean(1).cpu().contiguous()}
            del mb
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / f"{name}.safetensors")
        save_file({"pixel_values": pixels.contiguous(), "pooler_output": o.pooler_output.contiguous(),
                   "mean_patch": o.last_hidden_state[:, prefix:].mean(1).contiguous(), **extra},
                  out / f"{name}.io.safetensors")
        print(name, flush=True)

if __name__ == "__main__":
    main()
