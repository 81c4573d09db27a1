#!/usr/bin/env python3
"""The S3 gateway against `mspace put/get` of the same file, in the same run, on one host:
a multipart upload (boto3's managed transfer), a ranged parallel download and a single
GET of the whole object through the gateway, byte-identical, timed against `mspace put
--link` and `mspace get` of the same file to the same host. Prints one JSON line per round with the ratios and the gateway's
CPU seconds during its PUT and its GET, and the gateway's peak resident memory (VmHWM) at
the end.

    cargo build --release --bin mspace
    target/s3-clients/bin/python scripts/gateway-bench.py [--size-mib 1024] [--rounds 2]

(scripts/s3-clients.sh installs the python with boto3.)
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def start(cmd, ready, log):
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(log, "w"), text=True)
    for line in p.stdout:
        if ready in line:
            return p
    raise SystemExit(f"{cmd} stopped before {ready!r}; see {log}")


def cpu_s(pid):
    """User and system CPU seconds a process has used so far."""
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def run(cmd, env=None):
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"{cmd}: {p.stderr}")
    return p.stdout


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--mspace", default=os.path.join(here, "..", "target", "release", "mspace"))
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--part-mib", type=int, default=64)
    ap.add_argument("--dir", help="where the host, the gateway and the file live (kept); default a temporary folder under target/, removed at the end")
    a = ap.parse_args()
    m = a.mspace
    d = a.dir or tempfile.mkdtemp(prefix="gateway-bench-", dir=os.path.join(here, "..", "target"))
    control, data, s3port = free_port(), free_port(), free_port()
    run([m, "host", "init", "--config", f"{d}/host/host.toml", "--data-dir", f"{d}/data",
         "--listen", f"127.0.0.1:{data}", "--control-listen", f"127.0.0.1:{control}"])
    token = [l.split('"')[1] for l in open(f"{d}/host/host.toml") if l.startswith("control_token")][0]
    host = start([m, "host", "--config", f"{d}/host/host.toml"], "control plane on", f"{d}/host.log")
    out = run([m, "gateway", "init", "--config", f"{d}/gw/gateway.toml", "--listen", f"127.0.0.1:{s3port}",
               "--host-control", f"127.0.0.1:{control}", "--host-token", token])
    access = out.split("access key ")[1].split(",")[0]
    gw = start([m, "gateway", "run", "--config", f"{d}/gw/gateway.toml"], "S3 gateway on", f"{d}/gw.log")
    try:
        secret = open(f"{d}/gw/gateway.secret").read().strip()
        s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{s3port}", aws_access_key_id=access,
                          aws_secret_access_key=secret, region_name="us-east-1",
                          config=Config(s3={"addressing_style": "path"}))
        s3.create_bucket(Bucket="bench")
        size = a.size_mib << 20
        src = f"{d}/file.bin"
        with open(src, "wb") as f:
            for _ in range(a.size_mib):
                f.write(os.urandom(1 << 20))
        tc = TransferConfig(multipart_threshold=a.part_mib << 20, multipart_chunksize=a.part_mib << 20,
                            max_concurrency=4)
        env = dict(os.environ, MSPACE_PASSPHRASE="gateway bench")
        rows = []
        for r in range(a.rounds):
            link = run([m, "host", "link", "--config", f"{d}/host/host.toml", "--upload", "--bytes",
                        f"{a.size_mib + 64}MiB", "--ttl", "1h"]).strip()
            t = time.monotonic()
            put = json.loads(run([m, "put", src, "--link", link, "--json"], env=env))
            mput = time.monotonic() - t
            dl = run([m, "host", "link", "--config", f"{d}/host/host.toml", "--download",
                      put["manifest_id"], "--ttl", "1h"]).strip()
            back = f"{d}/back.mspace"
            t = time.monotonic()
            run([m, "get", dl, "--out", back, "--force", "--share-key", put["share_key"], "--json"])
            mget = time.monotonic() - t
            same_m = subprocess.run(["cmp", "-s", src, back]).returncode == 0
            os.remove(back)
            t, c0 = time.monotonic(), cpu_s(gw.pid)
            s3.upload_file(src, "bench", f"file{r}.bin", Config=tc)
            gput, gput_cpu = time.monotonic() - t, cpu_s(gw.pid) - c0
            back = f"{d}/back.s3"
            t, c0 = time.monotonic(), cpu_s(gw.pid)
            s3.download_file("bench", f"file{r}.bin", back, Config=tc)
            gget, gget_cpu = time.monotonic() - t, cpu_s(gw.pid) - c0
            same_g = subprocess.run(["cmp", "-s", src, back]).returncode == 0
            os.remove(back)
            # The whole object as one GET, one stream (as `aws s3 cp s3://... -` reads it):
            # every piece one after another.
            t = time.monotonic()
            body = s3.get_object(Bucket="bench", Key=f"file{r}.bin")["Body"]
            with open(back, "wb") as f:
                for chunk in body.iter_chunks(1 << 20):
                    f.write(chunk)
            gget1 = time.monotonic() - t
            same_g = same_g and subprocess.run(["cmp", "-s", src, back]).returncode == 0
            os.remove(back)
            row = {
                "round": r, "bytes": size, "part_mib": a.part_mib,
                "mspace_put_s": round(mput, 2), "gateway_put_s": round(gput, 2),
                "mspace_get_s": round(mget, 2), "gateway_get_s": round(gget, 2),
                "put_ratio": round(mput / gput, 2), "get_ratio": round(mget / gget, 2),
                "gateway_put_cpu_s": round(gput_cpu, 2), "gateway_get_cpu_s": round(gget_cpu, 2),
                "gateway_get_one_stream_s": round(gget1, 2), "get_one_stream_ratio": round(mget / gget1, 2),
                "mspace_put_MBps": round(size / mput / 1e6), "gateway_put_MBps": round(size / gput / 1e6),
                "mspace_get_MBps": round(size / mget / 1e6), "gateway_get_MBps": round(size / gget / 1e6),
                "identical": same_m and same_g,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
        hwm = [l.split()[1] for l in open(f"/proc/{gw.pid}/status") if l.startswith("VmHWM")][0]
        print(json.dumps({"gateway_peak_rss_kib": int(hwm), "file_mib": a.size_mib}), flush=True)
        if not all(r["identical"] for r in rows):
            sys.exit(1)
    finally:
        gw.kill()
        host.kill()
        gw.wait()
        host.wait()
        if not a.dir:
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
