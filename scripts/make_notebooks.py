"""Writes the notebooks in notebooks/ from the cell sources below (run with the notebooks' venv:
`python scripts/make_notebooks.py`). The notebooks open a roadwork store with `lancedb` and
`polars` alone; the integration test `interop::notebooks_run_on_the_demo_store` executes them.

Each notebook starts with the one cell that points it at a store, and writes its figures as PNG
files to `ROADWORK_FIGURES` (default `figures/`), which the test checks.
"""

import pathlib

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

OUT = pathlib.Path(__file__).resolve().parent.parent / "notebooks"

SETUP = '''\
import os, pathlib
STORE = os.environ.get("ROADWORK_STORE", "../roadwork-data/store")  # a path or an s3:// URI
FIGURES = pathlib.Path(os.environ.get("ROADWORK_FIGURES", "figures")) / "{name}"
FIGURES.mkdir(parents=True, exist_ok=True)

import lancedb
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import polars as pl

db = lancedb.connect(STORE)


def table_names():
    names, token = [], None
    while True:
        page = db.list_tables(page_token=token)
        names += page.tables
        token = page.page_token
        if not token:
            return sorted(names)


TABLES = set(table_names())


def arrow(name, columns=None, where=None):
    """A table (or some of its columns, optionally filtered by SQL) as Arrow."""
    q = db.open_table(name).search()
    if columns is not None:
        q = q.select(columns)
    if where is not None:
        q = q.where(where)
    return q.limit(None).to_arrow()


def table(name, columns=None, where=None):
    """The same as a polars frame."""
    return pl.from_arrow(arrow(name, columns, where))


def save(fig, name):
    """Writes a figure where the test (and you) can find it."""
    path = FIGURES / f"{{name}}.png"
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path
'''


def effective_labels_cell():
    return '''\
# The precedence rule (human > dataset > synthetic > teacher; newest within a source) that the
# store's readers apply: one effective label per labelled sample.
PRECEDENCE = {"human": 3, "dataset": 2, "synthetic": 1, "teacher": 0}
labels = table("labels")
effective = (
    labels.with_columns(pl.col("source").replace_strict(PRECEDENCE).alias("rank"))
    .sort(["sample_id", "rank", "ts", "author"], descending=[False, True, True, False])
    .group_by("sample_id", maintain_order=True)
    .first()
    .select("sample_id", "label", pl.col("source").alias("label_source"))
)
effective.group_by("label", "label_source").len().sort("label", "label_source")'''


NOTEBOOKS = {
    "store_tour": [
        new_markdown_cell(
            "# A tour of the roadwork store\n\n"
            "Opens the store with `lancedb` and `polars` alone — no roadwork binary. "
            "Run `./scripts/demo` first (or point `ROADWORK_STORE` at any store)."
        ),
        "SETUP",
        new_code_cell(
            '''\
# Every table, its row count and its columns (roadwork store info --json says the same).
pl.DataFrame(
    [
        {"table": t, "rows": db.open_table(t).count_rows(),
         "columns": ", ".join(db.open_table(t).schema.names)}
        for t in sorted(TABLES)
    ]
)'''
        ),
        new_code_cell(
            '''\
samples = table("samples", columns=["sample_id", "source", "era", "width", "height", "tags", "received_at"])
samples.group_by("source", "era").len().sort("source", "era")'''
        ),
        new_code_cell(effective_labels_cell()),
        new_code_cell(
            '''\
# The dataset by source, label and era over time.
by_day = (
    samples.join(effective, on="sample_id", how="left")
    .with_columns(pl.col("received_at").dt.date().alias("day"),
                  pl.col("label").cast(pl.Utf8).fill_null("unlabelled"))
    .group_by("day", "source", "label", "era").len()
    .sort("day")
)
fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
for ax, key in zip(axes, ["source", "label"]):
    pivot = by_day.group_by("day", key).agg(pl.col("len").sum()).pivot(on=key, index="day", values="len").fill_null(0).sort("day")
    bottom = np.zeros(pivot.height)
    for col in pivot.columns[1:]:
        ax.bar([str(d) for d in pivot["day"]], pivot[col], bottom=bottom, label=col)
        bottom += pivot[col].to_numpy()
    ax.set_title(f"samples received per day by {key}")
    ax.legend(fontsize=8)
save(fig, "samples_by_day")
by_day'''
        ),
        new_code_cell(
            '''\
# Tags are key=value strings: conditions per class.
(samples.join(effective, on="sample_id").explode("tags")
    .with_columns(pl.col("tags").str.split_exact("=", 1).struct.rename_fields(["key", "value"]))
    .unnest("tags")
    .filter(pl.col("key").is_in(["daytime", "weather"]))
    .group_by("key", "value", "label").len()
    .sort("key", "value", "label"))'''
        ),
    ],
    "clusters": [
        new_markdown_cell(
            "# The cluster map\n\nThe latest mining run's clusters over the embeddings: a 2-D "
            "projection (PCA) of the vectors, coloured by cluster, label and hardness."
        ),
        "SETUP",
        new_code_cell(
            '''\
runs = table("runs")
mine_run = (runs.filter((pl.col("kind") == "mine") & (pl.col("status") == "ok"))
                .sort("started_at").tail(1)["run_id"].item())
scores = table("mine_scores", where=f"run_id = '{mine_run}'")
clusters = table("mine_clusters", where=f"run_id = '{mine_run}'")
print(mine_run, scores.height, "scored samples in", clusters.height, "clusters")
clusters.select("cluster", "size", "n_labelled", "positive_share", "error_rate", "under_covered").sort("size", descending=True)'''
        ),
        new_code_cell(
            '''\
# The embeddings of the model the run mined (one table per model id).
emb_table = max((t for t in TABLES if t.startswith("embeddings_")),
                key=lambda t: db.open_table(t).count_rows())
emb = arrow(emb_table, columns=["sample_id", "vector"])
ids = emb["sample_id"].to_pylist()
X = np.stack(emb["vector"].to_numpy(zero_copy_only=False)).astype(np.float64)
X -= X.mean(axis=0)
_, _, vt = np.linalg.svd(X, full_matrices=False)
xy = X @ vt[:2].T
coords = pl.DataFrame({"sample_id": ids, "x": xy[:, 0], "y": xy[:, 1]})
mapped = coords.join(scores.select("sample_id", "cluster", "hardness"), on="sample_id")
print(emb_table, X.shape)'''
        ),
        new_code_cell(
            '''\
fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
axes[0].scatter(mapped["x"], mapped["y"], c=mapped["cluster"], cmap="tab20", s=8)
axes[0].set_title(f"clusters of {mine_run}")
sc = axes[1].scatter(mapped["x"], mapped["y"], c=mapped["hardness"], cmap="magma", s=8)
axes[1].set_title("hardness")
fig.colorbar(sc, ax=axes[1])
save(fig, "cluster_map")'''
        ),
    ],
    "hard_cases": [
        new_markdown_cell(
            "# Hard cases\n\nThe hardest samples of the latest mining run, with their scores and "
            "the reasons mining gives, as a gallery; then the suspected label issues."
        ),
        "SETUP",
        new_code_cell(
            '''\
import io
from PIL import Image
runs = table("runs")
mine_run = (runs.filter((pl.col("kind") == "mine") & (pl.col("status") == "ok"))
                .sort("started_at").tail(1)["run_id"].item())
hard = (table("mine_scores", where=f"run_id = '{mine_run}'")
        .sort("hardness", descending=True).head(12))
# The effective label (human > dataset > synthetic > teacher; newest within a source).
PRECEDENCE = {"human": 3, "dataset": 2, "synthetic": 1, "teacher": 0}
effective = (table("labels").with_columns(pl.col("source").replace_strict(PRECEDENCE).alias("rank"))
             .sort(["sample_id", "rank", "ts"], descending=[False, True, True])
             .group_by("sample_id", maintain_order=True).first()
             .select("sample_id", pl.col("label").alias("a_label")))
hard = hard.join(effective, on="sample_id", how="left")
hard.select("sample_id", "a_label", "hardness", "prob", "label_issue", "outlier", "reasons")'''
        ),
        new_code_cell(
            '''\
ids = ", ".join(f"'{i}'" for i in hard["sample_id"])
images = table("samples", columns=["sample_id", "image"], where=f"sample_id IN ({ids})")
by_id = dict(zip(images["sample_id"], images["image"]))
fig, axes = plt.subplots(3, 4, figsize=(12, 8))
for ax, row in zip(axes.flat, hard.iter_rows(named=True)):
    ax.imshow(Image.open(io.BytesIO(by_id[row["sample_id"]])))
    label = {1: "roadwork", 0: "clean"}.get(row["a_label"], "unlabelled")
    p = row["prob"] if row["prob"] is not None else float("nan")
    ax.set_title(f"{label}  hardness {row['hardness']:.2f}  p={p:.2f}\\n{row['reasons'][:40]}", fontsize=7)
    ax.axis("off")
save(fig, "hard_cases")'''
        ),
        new_code_cell(
            '''\
# Label issues (confident learning) with the label they carry.
table("mine_scores", where=f"run_id = '{mine_run}' AND label_issue").select("sample_id", "hardness", "prob", "reasons")'''
        ),
    ],
    "models": [
        new_markdown_cell(
            "# Models\n\nEvery registered head's metrics on its eval sets (the `evaluations` "
            "table), and the promotion history from the run ledger: each nightly job's promote "
            "stage records the challenger, the champion, both scores and the decision."
        ),
        "SETUP",
        new_code_cell(
            '''\
import json
models = table("models").sort("created_at")
evals = table("evaluations").sort("ts")
def metric(key):
    return pl.col("metrics").map_elements(lambda m: json.loads(m)["metrics"].get(key), return_dtype=pl.Float64).alias(key)
metrics = evals.with_columns(metric("accuracy"), metric("mcc"), metric("roc_auc"), metric("ece"),
    pl.col("metrics").map_elements(lambda m: (json.loads(m).get("replay") or {}).get("mean_reward"), return_dtype=pl.Float64).alias("replay_reward"))
metrics.select("model_version", "eval_set", "n", "accuracy", "mcc", "roc_auc", "ece", "replay_reward")'''
        ),
        new_code_cell(
            '''\
# The promotion history: the promote stage of every nightly job in the ledger.
decisions = []
for run_id, started, summary in table("runs", where="kind = 'nightly'").sort("started_at").select("run_id", "started_at", "summary").iter_rows():
    for stage in json.loads(summary).get("stages", []):
        d = ((stage.get("outputs") or {}).get("decision")) if stage.get("stage") == "promote" else None
        if d:
            decisions.append({"run": run_id, "at": started, "challenger": d["challenger"], "champion": d["champion"],
                              "metric": d["metric"], "challenger_score": d["challenger_score"],
                              "champion_score": d["champion_score"], "promoted": d["promoted"],
                              "why": "; ".join(d.get("reasons") or [])})
history = pl.DataFrame(decisions) if decisions else pl.DataFrame({"run": []})
history'''
        ),
        new_code_cell(
            '''\
fig, ax = plt.subplots(figsize=(7, 3.5))
order = {v: i for i, v in enumerate(models["model_version"])}
for name, group in metrics.group_by("eval_set"):
    xs = [order.get(v, 0) for v in group["model_version"]]
    ax.plot(xs, group["mcc"], marker="o", label=f"eval set {name[0][:8]}")
if history.height:
    for row in history.filter(pl.col("promoted")).iter_rows(named=True):
        ax.axvline(order.get(row["challenger"], 0), color="tab:green", ls=":", lw=1)
ax.set_xticks(range(models.height))
ax.set_xticklabels([m[-13:] for m in models["model_version"]], rotation=30, fontsize=7)
ax.set_ylabel("MCC")
ax.set_title("heads across versions (dotted: promoted)")
ax.legend(fontsize=8)
save(fig, "model_mcc")'''
        ),
    ],
    "drift": [
        new_markdown_cell(
            "# Drift per cluster\n\nWhere validator traffic lands compared with the training data, "
            "per cluster of the latest mining run."
        ),
        "SETUP",
        new_code_cell(
            '''\
runs = table("runs")
mine_run = (runs.filter((pl.col("kind") == "mine") & (pl.col("status") == "ok"))
                .sort("started_at").tail(1)["run_id"].item())
clusters = table("mine_clusters", where=f"run_id = '{mine_run}'").sort("drift_ratio", descending=True)
clusters.select("cluster", "size", "train_share", "traffic_share", "drift_ratio", "drift_z", "under_covered")'''
        ),
        new_code_cell(
            '''\
fig, ax = plt.subplots(figsize=(6, 5))
colors = np.where(clusters["under_covered"].to_numpy(), "tab:red", "tab:blue")
ax.scatter(clusters["train_share"], clusters["traffic_share"], s=clusters["size"] * 2 + 5, c=colors, alpha=0.7)
top = max(clusters["train_share"].max(), clusters["traffic_share"].max()) * 1.1
ax.plot([0, top], [0, top], "k--", lw=0.8)
ax.set_xlabel("share of training data")
ax.set_ylabel("share of validator traffic")
ax.set_title("drift per cluster (red: under-covered)")
save(fig, "drift")'''
        ),
    ],
    "traffic": [
        new_markdown_cell(
            "# Validator traffic\n\nWhat the server answered: requests per hour and validator, "
            "answer latency, tiers and the scores sent."
        ),
        "SETUP",
        new_code_cell(
            '''\
pred = table("predictions")
print(pred.height, "answers logged")
pred.group_by("validator").agg(pl.len().alias("requests"),
                                pl.col("latency_ms").median().alias("p50_ms"),
                                pl.col("latency_ms").quantile(0.95).alias("p95_ms"),
                                (pl.col("final_score") < 0).sum().alias("undecodable"))'''
        ),
        new_code_cell(
            '''\
fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
per_hour = pred.with_columns(pl.col("ts").dt.truncate("1h").alias("hour")).group_by("hour").len().sort("hour")
axes[0].bar([str(h)[5:16] for h in per_hour["hour"]], per_hour["len"])
axes[0].set_title("requests per hour")
axes[0].tick_params(axis="x", rotation=45, labelsize=7)
axes[1].hist(pred["latency_ms"], bins=20)
axes[1].set_title("answer latency (ms)")
answered = pred.filter(pl.col("final_score") >= 0)
axes[2].hist(answered["final_score"], bins=20, range=(0, 1))
axes[2].set_title("P(roadwork) sent")
save(fig, "traffic")
pred.group_by("tier", "model_version").len()'''
        ),
    ],
}


def main():
    for name, cells in NOTEBOOKS.items():
        nb = new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nb.cells = [
            new_code_cell(SETUP.format(name=name)) if c == "SETUP" else c for c in cells
        ]
        nbformat.write(nb, OUT / f"{name}.ipynb")
        print("wrote", OUT / f"{name}.ipynb")


if __name__ == "__main__":
    main()
