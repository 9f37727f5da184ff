#!/usr/bin/env python3
"""Writes the validator allow-list `roadwork serve` reads (serve.metagraph) from the live metagraph.

Run it where the bittensor SDK is installed and the chain is reachable, e.g. from cron every few
minutes; the server reloads the file when it changes. The file is replaced atomically (write to a
temporary name, then rename), so the server never reads half of it.

    python3 scripts/metagraph_snapshot.py --netuid 72 --out roadwork-data/metagraph.json
"""

import argparse
import json
import os
import tempfile


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--netuid", type=int, default=72)
    ap.add_argument("--network", default="finney")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import bittensor as bt  # imported here so --help works without the SDK

    mg = bt.Subtensor(network=args.network).metagraph(args.netuid)
    rows = [
        {
            "hotkey": mg.hotkeys[uid],
            "stake": float(mg.S[uid]),
            "validator_permit": bool(mg.validator_permit[uid]),
        }
        for uid in range(int(mg.n))
    ]
    out = os.path.abspath(args.out)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(out), prefix=".metagraph-")
    with os.fdopen(fd, "w") as f:
        json.dump(rows, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out)
    permitted = sum(r["validator_permit"] for r in rows)
    print(f"{out}: {len(rows)} neurons, {permitted} with a validator permit")


if __name__ == "__main__":
    main()
