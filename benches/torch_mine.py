"""Reference speed of k-means and the brute-force kNN graph in PyTorch on a GPU, on the vectors
`roadwork bench mine --device cuda` times (the same protocol as sklearn_mine.py, so the bench reads
either: `roadwork bench mine --device cuda --sklearn-script benches/torch_mine.py`).

Usage: python3 torch_mine.py --data X.f32 --n N --dim D --init C.f32 --k K --iters I --knn-k KK [--knn-n M]
Lloyd: squared distances as ‖x‖² − 2·x·cᵀ + ‖c‖² (torch.addmm), argmin, centroid sums by index_add_;
the graph: blocks of unit rows, x·xᵀ and torch.topk. f32 (no TF32), CUDA-synchronised wall time.
Prints the env line, {"op": "lloyd", …} and {"op": "knn_brute", …} (there is no Elkan variant).
"""
import argparse, json, time

import numpy as np
import torch


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def assign(x, xx, c):
    d = torch.addmm(xx[:, None] + (c * c).sum(1)[None, :], x, c.t(), alpha=-2.0)
    return d.min(1)


def lloyd(x, c, iters):
    xx = (x * x).sum(1)
    k = c.shape[0]
    for _ in range(iters):
        _, lab = assign(x, xx, c)
        sums = torch.zeros_like(c).index_add_(0, lab, x)
        counts = torch.bincount(lab, minlength=k).to(x.dtype)
        keep = counts == 0
        c = torch.where(keep[:, None], c, sums / counts.clamp(min=1)[:, None])
    dist, _ = assign(x, xx, c)
    return c, float(dist.clamp(min=0).sum())


def knn(z, k, block=8192):
    out = []
    for i in range(0, z.shape[0], block):
        s = z[i : i + block] @ z.t()
        out.append(torch.topk(s, k + 1, dim=1).indices)
    return torch.cat(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--dim", type=int, required=True)
    ap.add_argument("--init", required=True)
    ap.add_argument("--k", type=int, required=True)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--knn-k", type=int, default=20)
    ap.add_argument("--knn-n", type=int, default=0)
    a = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.from_numpy(np.fromfile(a.data, dtype="<f4").reshape(a.n, a.dim)).to(dev)
    init = torch.from_numpy(np.fromfile(a.init, dtype="<f4").reshape(a.k, a.dim)).to(dev)
    name = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
    print(json.dumps(dict(op="env", sklearn=f"torch {torch.__version__} ({name})", numpy=np.__version__,
                          blas="cuBLAS" if dev == "cuda" else torch.__config__.show().splitlines()[0])), flush=True)
    with torch.inference_mode():
        lloyd(x, init, 2)  # warm-up: kernels, cuBLAS handles, the caching allocator
        sync()
        t = time.perf_counter()
        _, inertia = lloyd(x, init, a.iters)
        sync()
        s = time.perf_counter() - t
        print(json.dumps(dict(op="lloyd", s_per_iter=s / (a.iters + 1), iterations=a.iters, inertia=inertia)), flush=True)
        if a.knn_n > 0:
            z = x[: a.knn_n]
            z = z / z.norm(dim=1, keepdim=True).clamp(min=1e-12)
            knn(z[:1024], a.knn_k)
            sync()
            t = time.perf_counter()
            knn(z, a.knn_k)
            sync()
            print(json.dumps(dict(op="knn_brute", n=a.knn_n, k=a.knn_k, s=time.perf_counter() - t)), flush=True)


if __name__ == "__main__":
    main()
