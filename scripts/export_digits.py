#!/usr/bin/env python3
"""Exports scikit-learn's copy of the UCI "Optical Recognition of Handwritten Digits" test set
(1,797 8x8 images, 10 classes; E. Alpaydin and C. Kaynak, 1998, CC BY 4.0;
https://archive.ics.uci.edu/dataset/80) to datasets/digits/digits.csv, once.

The file is committed, so nothing downloads at build or test time: scikit-learn ships the data inside
its wheel (sklearn/datasets/data/digits.csv.gz). Columns: label, p0..p63 (pixel intensities 0..16,
row-major).

    pip install scikit-learn && python3 scripts/export_digits.py
"""
import csv
import pathlib

from sklearn.datasets import load_digits

out = pathlib.Path(__file__).resolve().parent.parent / "datasets" / "digits" / "digits.csv"
out.parent.mkdir(parents=True, exist_ok=True)
d = load_digits()
with out.open("w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["label"] + [f"p{i}" for i in range(64)])
    for x, y in zip(d.data.astype(int), d.target):
        w.writerow([int(y)] + [int(v) for v in x])
print(f"wrote {len(d.target)} rows to {out}")
