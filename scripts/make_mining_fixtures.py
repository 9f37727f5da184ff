#!/usr/bin/env python3
"""Reference outputs for the mining tests, from scikit-learn and cleanlab on the committed digits
data (datasets/digits/digits.csv). Written once to tests/fixtures/mining/; the Rust tests compare
against them, so our k-means and confident learning are checked against the implementations the
field uses, not against our own numbers.

    pip install scikit-learn cleanlab && python3 scripts/make_mining_fixtures.py

Fixtures:
  kmeans_digits.json   k=10 on the 64 pixel features: the k-means++ init centres (sklearn
                       kmeans_plusplus, random_state=0), the Lloyd inertia sklearn reaches from them,
                       and the best inertia of sklearn's KMeans(n_init=10).
  cleanlab_digits.json 10-class: labels with 8 % flipped (seed 0), 5-fold out-of-sample
                       probabilities of a logistic regression, and find_label_issues' mask.
  cleanlab_binary.json the same for the binary task "is it a 3?" with 6 % flipped labels.
"""
import csv
import json
import pathlib

import cleanlab
import numpy as np
import sklearn
from cleanlab.filter import find_label_issues
from sklearn.cluster import KMeans, kmeans_plusplus
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_predict

root = pathlib.Path(__file__).resolve().parent.parent
out = root / "tests" / "fixtures" / "mining"
out.mkdir(parents=True, exist_ok=True)
rows = list(csv.reader((root / "datasets" / "digits" / "digits.csv").open()))[1:]
y = np.array([int(r[0]) for r in rows])
x = np.array([[float(v) for v in r[1:]] for r in rows])
versions = {"scikit-learn": sklearn.__version__, "cleanlab": cleanlab.__version__}

# k-means: same data, same init.
init, _ = kmeans_plusplus(x, n_clusters=10, random_state=0)
km = KMeans(n_clusters=10, init=init, n_init=1, max_iter=300, tol=0.0, algorithm="lloyd").fit(x)
best = KMeans(n_clusters=10, init="k-means++", n_init=10, random_state=0, algorithm="lloyd").fit(x)
json.dump(
    {
        "versions": versions,
        "k": 10,
        "init": init.tolist(),
        "inertia_from_init": float(km.inertia_),
        "iterations_from_init": int(km.n_iter_),
        "best_inertia_n_init_10": float(best.inertia_),
    },
    (out / "kmeans_digits.json").open("w"),
)


def label_issue_fixture(name, labels_true, flip_share, seed):
    rng = np.random.default_rng(seed)
    k = int(labels_true.max()) + 1
    noisy = labels_true.copy()
    flip = rng.random(len(noisy)) < flip_share
    noisy[flip] = (noisy[flip] + rng.integers(1, k, flip.sum())) % k
    clf = LogisticRegression(max_iter=2000)
    probs = cross_val_predict(clf, x / 16.0, noisy, cv=5, method="predict_proba")
    # The fixture stores rounded probabilities; cleanlab runs on exactly those numbers.
    probs = np.round(probs, 6)
    probs = probs / probs.sum(axis=1, keepdims=True)
    probs = np.round(probs, 9)
    mask = find_label_issues(noisy, probs)
    json.dump(
        {
            "versions": versions,
            "classes": k,
            "labels": noisy.tolist(),
            "flipped": np.flatnonzero(flip).tolist(),
            "pred_probs": probs.tolist(),
            "issues": np.flatnonzero(mask).tolist(),
        },
        (out / name).open("w"),
    )
    print(f"{name}: {flip.sum()} flipped, {mask.sum()} issues found by cleanlab")


label_issue_fixture("cleanlab_digits.json", y, 0.08, 0)
label_issue_fixture("cleanlab_binary.json", (y == 3).astype(int), 0.06, 1)
print(f"kmeans: inertia from init {km.inertia_:.1f} ({km.n_iter_} iters), best of 10 {best.inertia_:.1f}")
