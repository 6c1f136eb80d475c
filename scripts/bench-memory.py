#!/usr/bin/env python3
"""Where serve's memory goes with a large catalog (not a test): `scripts/bench memory`.

The report's setting: BENCH_STORES (8) stores x BENCH_SKUS (20 000) SKUs, produced live by
the simulator at BENCH_RATE (2 000) records/s for BENCH_SECONDS (120) with a flash sale
(50 SKUs per store from 30 s). serve (release build) starts from scratch on topics of its
own, once per variant, so the variants isolate what holds memory:

- `no clients`: ingest, frames and checkpoints only;
- `one all-stores stream`: plus one dashboard reading /api/stream (gzip, as a browser);
- `stream + snapshots`: plus an all-stores /api/snapshot every 2 s.

Prints serve's RSS every 30 s, the last checkpoint's size and the frame log's bytes, per
variant, as a Markdown table."""
import os, random, subprocess, sys, threading, time, urllib.request
from benchlib import count_stream, free_port, metrics, rss_mb

bin_ = sys.argv[1]
stores = os.environ.get("BENCH_STORES", "8")
skus = os.environ.get("BENCH_SKUS", "20000")
rate = os.environ.get("BENCH_RATE", "2000")
seconds = int(os.environ.get("BENCH_SECONDS", "120"))
variants = os.environ.get("BENCH_VARIANTS", "none,stream,snapshots").split(",")


def snapshot_poller(port, stop, sizes):
    while not stop.wait(2):
        try:
            sizes.append(len(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/snapshot", timeout=60).read()))
        except OSError:
            pass


def run(variant):
    tag = "%08x" % random.getrandbits(32)
    topics = {f"STOREPULSE_TOPIC_{r.upper()}": f"bench-memory-{tag}-{r}" for r in ("orders", "inventory", "activity")}
    port = free_port()
    env = {**os.environ, **topics, "STOREPULSE_HTTP_ADDR": f"127.0.0.1:{port}",
           "STOREPULSE_GROUP_ID": f"bench-memory-{tag}", "RUST_LOG": "error"}
    subprocess.run([bin_, "simulate", "--quiet", "--count", "1", "--stores", stores, "--skus", "1", "--flash-skus", "0"],
                   env=env, check=True, stdout=subprocess.DEVNULL)  # creates the topics
    serve = subprocess.Popen([bin_, "serve"], env=env, stdout=subprocess.DEVNULL)
    stop = threading.Event()
    received, sizes, threads = [0], [], []
    try:
        for _ in range(300):
            if metrics(port):
                break
            time.sleep(0.1)
        simulate = subprocess.Popen([bin_, "simulate", "--quiet", "--rate", rate, "--duration", f"{seconds}s",
                                     "--stores", stores, "--skus", skus, "--popularity", "skewed",
                                     "--flash-skus", "50", "--flash-sale-for", "10m", "--oversell",
                                     "--seed", str(random.getrandbits(16))],
                                    env=env, stdout=subprocess.DEVNULL)
        if variant in ("stream", "snapshots"):
            threads.append(threading.Thread(target=count_stream, args=(port, "/api/stream", stop, received, True), daemon=True))
        if variant == "snapshots":
            threads.append(threading.Thread(target=snapshot_poller, args=(port, stop, sizes), daemon=True))
        for t in threads:
            t.start()
        started = time.time()
        samples = []
        for mark in range(30, seconds + 1, 30):
            time.sleep(max(0, started + mark - time.time()))
            samples.append(rss_mb(serve.pid))
        simulate.wait()
        m = metrics(port)
        count = m.get("storepulse_checkpoint_size_bytes_count", 0)
        last_ckpt = m.get("storepulse_checkpoint_size_bytes_sum", 0) / count / 1e6 if count else 0
        return {
            "samples": samples,
            "checkpoint_mb": last_ckpt,
            "log_mb": m.get("storepulse_frame_log_bytes", 0) / 1e6,
            "received_mb": received[0] / 1e6,
            "snapshot_mb": (max(sizes) / 1e6) if sizes else 0,
        }
    finally:
        stop.set()
        serve.terminate(); serve.wait()


names = {"none": "no clients", "stream": "one all-stores stream", "snapshots": "stream + snapshots every 2 s"}
results = {v: run(v) for v in variants}
marks = list(range(30, seconds + 1, 30))
print(f"\n{stores} stores x {skus} SKUs (skewed), {rate} records/s for {seconds} s, flash sale on 50 SKUs per store\n")
print("| variant | " + " | ".join(f"RSS at {m} s" for m in marks) + " | mean checkpoint | frame log | stream received | largest snapshot |")
print("|---|" + "---|" * (len(marks) + 4))
for v, r in results.items():
    rss = " | ".join(f"{x:.0f} MB" for x in r["samples"])
    print(f"| {names[v]} | {rss} | {r['checkpoint_mb']:.1f} MB | {r['log_mb']:.1f} MB | {r['received_mb']:.1f} MB | {r['snapshot_mb']:.1f} MB |")
