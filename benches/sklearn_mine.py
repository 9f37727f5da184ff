"""Reference speed of scikit-learn's k-means and brute-force kNN on the vectors `roadwork bench mine` times.

Usage: python3 sklearn_mine.py --data X.f32 --n N --dim D --init C.f32 --k K --iters I --knn-k KK [--knn-n M]
X.f32 / C.f32 are little-endian float32, row-major (written by the bench). Prints one JSON line per case:
  {"op": "lloyd" | "elkan", "s_per_iter": …, "iterations": …, "inertia": …}
  {"op": "knn_brute", "n": …, "k": …, "s": …}
plus one {"op": "env", …} line with the versions and the BLAS it runs on.
"""
import argparse, json, time

import numpy as np
import sklearn
from sklearn.cluster import KMeans
from sklearn.neighbors import NearestNeighbors


def blas_info():
    try:
        from threadpoolctl import threadpool_info
        return [
            {k: i.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
            for i in threadpool_info()
        ]
    except Exception as e:  # threadpoolctl is a scikit-learn dependency; say so if it is missing
        return str(e)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--dim", type=int, required=True)
    ap.add_argument("--init", required=True)
    ap.add_argument("--k", type=int, required=True)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--knn-k", type=int, default=20)
    ap.add_argument("--knn-n", type=int, default=0, help="rows of the exact graph (0 = skip)")
    a = ap.parse_args()
    x = np.fromfile(a.data, dtype="<f4").reshape(a.n, a.dim)
    init = np.fromfile(a.init, dtype="<f4").reshape(a.k, a.dim)
    print(json.dumps(dict(op="env", sklearn=sklearn.__version__, numpy=np.__version__, blas=blas_info())), flush=True)
    for algorithm in ("lloyd", "elkan"):
        km = KMeans(n_clusters=a.k, init=init, n_init=1, max_iter=a.iters, tol=0.0, algorithm=algorithm)
        km.fit(x[:1000])  # warm the thread pools and code paths outside the timed fit
        km = KMeans(n_clusters=a.k, init=init, n_init=1, max_iter=a.iters, tol=0.0, algorithm=algorithm)
        t = time.perf_counter()
        km.fit(x)
        s = time.perf_counter() - t
        # Like roadwork's `lloyd`, scikit-learn ends with one assignment pass after the last update.
        print(json.dumps(dict(op=algorithm, s_per_iter=s / (km.n_iter_ + 1), iterations=int(km.n_iter_),
                              inertia=float(km.inertia_))), flush=True)
    if a.knn_n > 0:
        # Cosine neighbours are the Euclidean neighbours of the unit rows; scikit-learn's fast brute
        # path (chunked GEMM + heaps) is the Euclidean one, so the rows go in normalised.
        z = x[: a.knn_n]
        z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
        nn = NearestNeighbors(n_neighbors=a.knn_k + 1, algorithm="brute", metric="euclidean").fit(z)
        nn.kneighbors(z[:256])
        t = time.perf_counter()
        nn.kneighbors(z)
        s = time.perf_counter() - t
        print(json.dumps(dict(op="knn_brute", n=a.knn_n, k=a.knn_k, s=s)), flush=True)


if __name__ == "__main__":
    main()
