#!/usr/bin/env python3
"""Time from `mspace put` to its first byte on a host, three ways, on one local devnet.

    scripts/first-byte.py [--mspace target/release/mspace] [--size-mib 64] [--rounds 3]

Starts `mspace devnet --validators 1 --hosts 2 --exchanges 1` (an index too) in a
temporary folder, funds nothing more than the devnet does (its client key pays), and puts
the same file, in turn:

- direct: through an upload link that host0 minted (`mspace host link --upload`): no
  chain, no market;
- known host: `--host CONTROL --chain MINER --days 1`: a paid deal with a host named by
  address (offer, payment on chain, deal link, upload);
- market: `--index INDEX --copies 1 --days 1`: the nearest live exchange the index lists
  matches the cheapest host, then as above.

Each row is what `mspace put --json` reports in `timings` (ms from the command's start:
hosts matched, first chunk sent, done), median over the rounds, and the first byte's
ratio to the direct put's. Prints a Markdown table for docs/BENCHMARKS.md.
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time


def run(mspace, args, env=None):
    r = subprocess.run([mspace] + args, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit(f"mspace {' '.join(args)}: {r.stderr}")
    return r.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mspace", default="target/release/mspace")
    ap.add_argument("--size-mib", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--base-port", type=int, default=31000)
    a = ap.parse_args()
    mspace = os.path.abspath(a.mspace)
    work = tempfile.mkdtemp(prefix="first-byte-")
    net = os.path.join(work, "net")
    devnet = subprocess.Popen(
        [mspace, "devnet", "--validators", "1", "--hosts", "2", "--exchanges", "1",
         "--dir", net, "--base-port", str(a.base_port), "--block-time-ms", "200"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in devnet.stdout:
            if line.startswith("try:"):
                break
        else:
            sys.exit("the devnet ended before it was ready")
        layout = json.load(open(os.path.join(net, "devnet.json")))
        miner = layout["miners"][0]["control"]
        index = layout["index"]["listen"]
        host = layout["hosts"][0]
        client = layout["client_key"]
        # The exchange lists itself on the index and the hosts' asks reach it on their own
        # schedule: wait until a dry run matches.
        data = os.path.join(work, "file.bin")
        with open(data, "wb") as f:
            f.write(os.urandom(a.size_mib << 20))
        passfile = os.path.join(work, "pass")
        open(passfile, "w").write("first byte\n")
        deadline = time.monotonic() + 120
        while True:
            r = subprocess.run([mspace, "put", data, "--index", index, "--copies", "1", "--days", "1",
                                "--chain", miner, "--key", client, "--dry-run", "--json",
                                "--passphrase-file", passfile], capture_output=True, text=True)
            if r.returncode == 0 and json.loads(r.stdout):
                break
            if time.monotonic() > deadline:
                sys.exit(f"the market never matched: {r.stderr}")
            time.sleep(1)
        rows = {"direct": [], "known host": [], "market": []}
        for i in range(a.rounds):
            # A fresh state folder each time: no journal to resume from.
            env = dict(os.environ, MSPACE_STATE_DIR=os.path.join(work, f"state-{i}"))
            link = run(mspace, ["host", "link", "--config", host["config"], "--upload",
                                "--bytes", f"{2 * a.size_mib + 64}MiB", "--ttl", "10m"]).strip().split()[-1]
            out = run(mspace, ["put", data, "--link", link, "--key", client, "--passphrase-file",
                               passfile, "--json"], env)
            rows["direct"].append(json.loads(out)["timings"])
            env = dict(os.environ, MSPACE_STATE_DIR=os.path.join(work, f"state-k{i}"))
            out = run(mspace, ["put", data, "--host", host["control"], "--chain", miner, "--days", "1",
                               "--key", client, "--passphrase-file", passfile, "--json"], env)
            rows["known host"].append(json.loads(out)["timings"])
            env = dict(os.environ, MSPACE_STATE_DIR=os.path.join(work, f"state-m{i}"))
            out = run(mspace, ["put", data, "--index", index, "--copies", "1", "--chain", miner,
                               "--days", "1", "--key", client, "--passphrase-file", passfile,
                               "--json"], env)
            rows["market"].append(json.loads(out)["timings"])
        med = lambda xs: statistics.median(xs) if xs else None
        direct = med([t["first_byte_ms"] for t in rows["direct"]])
        print(f"| put of {a.size_mib} MiB | hosts matched (ms) | first byte (ms) | first byte / direct | done (ms) |")
        print("|---|---:|---:|---:|---:|")
        for name, ts in rows.items():
            m = med([t["matched_ms"] for t in ts if t["matched_ms"] is not None])
            fb = med([t["first_byte_ms"] for t in ts])
            done = med([t["total_ms"] for t in ts])
            print(f"| {name} | {'-' if m is None else int(m)} | {int(fb)} | {fb / direct:.1f} | {int(done)} |")
    finally:
        devnet.send_signal(signal.SIGTERM)
        devnet.wait()


if __name__ == "__main__":
    main()
