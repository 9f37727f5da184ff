"""Executes every notebook in notebooks/ top to bottom, headless, against one store, and fails
on the first cell error. Figures go to FIGURES/<notebook>/; executed copies to OUT/ if given.

    python notebooks/run_all.py --store roadwork-data/store --figures /tmp/figures [--out /tmp/executed]
"""

import argparse
import os
import pathlib
import sys

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

HERE = pathlib.Path(__file__).resolve().parent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", required=True)
    ap.add_argument("--figures", required=True)
    ap.add_argument("--out")
    ap.add_argument("--timeout", type=int, default=300)
    a = ap.parse_args()
    os.environ["ROADWORK_STORE"] = str(pathlib.Path(a.store).resolve())
    os.environ["ROADWORK_FIGURES"] = str(pathlib.Path(a.figures).resolve())
    failed = 0
    for path in sorted(HERE.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(nb, timeout=a.timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(HERE)}})
        try:
            client.execute()
            print(f"ok   {path.name}")
        except CellExecutionError as e:
            failed += 1
            print(f"FAIL {path.name}\n{e}")
        if a.out:
            out = pathlib.Path(a.out)
            out.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, out / path.name)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
