#!/usr/bin/env python3
"""Publishes this machine's IP and port as the miner's axon on chain, without starting a Python
axon: validators then send `POST /ImageSynapse` straight to `roadwork serve` on that port.

    python3 scripts/publish_axon.py --wallet.name miner --wallet.hotkey default \
        --netuid 72 --ip 203.0.113.7 --port 8091

Needs the bittensor SDK, the hotkey on this machine and a reachable chain. Re-run it when the IP or
port changes (the chain keeps the last published endpoint).
"""

import argparse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wallet.name", dest="wallet_name", required=True)
    ap.add_argument("--wallet.hotkey", dest="wallet_hotkey", default="default")
    ap.add_argument("--netuid", type=int, default=72)
    ap.add_argument("--network", default="finney")
    ap.add_argument("--ip", required=True, help="the public IP validators reach")
    ap.add_argument("--port", type=int, required=True, help="the port roadwork serve listens on")
    args = ap.parse_args()

    import bittensor as bt

    wallet = bt.Wallet(name=args.wallet_name, hotkey=args.wallet_hotkey)
    axon = bt.Axon(wallet=wallet, port=args.port, external_ip=args.ip, external_port=args.port)
    ok = bt.Subtensor(network=args.network).serve_axon(netuid=args.netuid, axon=axon)
    print(f"hotkey {wallet.hotkey.ss58_address}: {args.ip}:{args.port} published: {ok}")
    print("set serve.axon_hotkey to that address in roadwork's config")


if __name__ == "__main__":
    main()
