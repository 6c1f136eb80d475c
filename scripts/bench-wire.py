#!/usr/bin/env python3
"""What dashboards receive at a marketplace's size (not a test): `scripts/bench wire`.

BENCH_STORES (1 000) stores x BENCH_SKUS (100) SKUs, produced live by the simulator at
BENCH_RATE (20 000) records/s for BENCH_SECONDS (40) with a flash sale on 10 SKUs per store
(skewed popularity), into topics of their own; a release serve starts from scratch before
the sale. From 10 s into the sale, BENCH_DASHBOARDS (100) all-stores dashboards and one
dashboard of one store read /api/stream with gzip (as browsers do) for 20 s. Reported:
bytes per second each received on the wire (gzip), the frames they carried, the consumer
lag seen every 200 ms (p99 and max, records), and the all-stores /api/snapshot (size and
time to its last byte) during the sale. Medians of BENCH_RUNS (3) runs."""
import json, os, random, statistics, subprocess, sys, threading, time, urllib.request
from benchlib import count_stream, free_port, metrics, rss_mb

bin_ = sys.argv[1]
stores = os.environ.get("BENCH_STORES", "1000")
skus = os.environ.get("BENCH_SKUS", "100")
rate = os.environ.get("BENCH_RATE", "20000")
seconds = int(os.environ.get("BENCH_SECONDS", "40"))
dashboards = int(os.environ.get("BENCH_DASHBOARDS", "100"))
runs = int(os.environ.get("BENCH_RUNS", "3"))
WINDOW = 20


def frames(port, path, stop, counts):
    """Counts the deltas of a plain stream."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
            for line in response:
                if stop.is_set():
                    break
                if line.startswith(b"event: delta"):
                    counts[0] += 1
    except OSError:
        pass


def run():
    tag = "%08x" % random.getrandbits(32)
    topics = {f"STOREPULSE_TOPIC_{r.upper()}": f"bench-wire-{tag}-{r}" for r in ("orders", "inventory", "activity")}
    port = free_port()
    env = {**os.environ, **topics, "STOREPULSE_HTTP_ADDR": f"127.0.0.1:{port}",
           "STOREPULSE_GROUP_ID": f"bench-wire-{tag}", "RUST_LOG": "error"}
    subprocess.run([bin_, "simulate", "--quiet", "--count", "1", "--stores", "1", "--skus", "1", "--flash-skus", "0",
                    "--partitions", "4"], env=env, check=True, stdout=subprocess.DEVNULL)  # creates the topics
    serve = subprocess.Popen([bin_, "serve"], env=env, stdout=subprocess.DEVNULL)
    try:
        while not metrics(port):
            time.sleep(0.1)
        sale = subprocess.Popen([bin_, "simulate", "--quiet", "--rate", rate, "--duration", f"{seconds}s",
                                 "--stores", stores, "--skus", skus, "--popularity", "skewed",
                                 "--flash-skus", "10", "--flash-sale-at", "1s", "--flash-sale-for", "10m"],
                                env=env, stdout=subprocess.DEVNULL)
        time.sleep(10)
        stop = threading.Event()
        all_bytes = [[0] for _ in range(dashboards)]
        one_bytes, all_frames, one_frames = [0], [0], [0]
        store = urllib.request.urlopen(f"http://127.0.0.1:{port}/api/stores?limit=1", timeout=30)
        first = json.loads(store.read())["items"][0]
        threads = [threading.Thread(target=count_stream, args=(port, "/api/stream", stop, c)) for c in all_bytes]
        threads += [threading.Thread(target=count_stream, args=(port, f"/api/stream?store={first}", stop, one_bytes)),
                    threading.Thread(target=frames, args=(port, "/api/stream", stop, all_frames)),
                    threading.Thread(target=frames, args=(port, f"/api/stream?store={first}", stop, one_frames))]
        for t in threads:
            t.start()
        time.sleep(2)  # the opening snapshots are not the stream's rate
        start = ([c[0] for c in all_bytes], one_bytes[0], all_frames[0], one_frames[0])
        records = lambda: sum(v for k, v in metrics(port).items() if k.startswith("storepulse_records_total{"))
        records_before = records()
        lags, began = [], time.monotonic()
        snapshot = None
        while time.monotonic() - began < WINDOW:
            lags.append(metrics(port).get("storepulse_consumer_lag_records", 0))
            if snapshot is None and time.monotonic() - began > WINDOW / 2:
                t0 = time.monotonic()
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/api/snapshot", timeout=60).read()
                snapshot = (len(body), time.monotonic() - t0)
            time.sleep(0.2)
        elapsed = time.monotonic() - began
        applied = (records() - records_before) / elapsed
        per_all = statistics.median((c[0] - s) / elapsed for c, s in zip(all_bytes, start[0]))
        result = {"all_kbps": per_all / 1e3, "one_kbps": (one_bytes[0] - start[1]) / elapsed / 1e3,
                  "all_fps": (all_frames[0] - start[2]) / elapsed, "one_fps": (one_frames[0] - start[3]) / elapsed,
                  "lag_p99": sorted(lags)[int(len(lags) * 0.99) - 1] if lags else 0, "lag_max": max(lags or [0]),
                  "applied": applied, "snapshot_kb": snapshot[0] / 1e3, "snapshot_ms": snapshot[1] * 1e3, "rss": rss_mb(serve.pid)}
        stop.set()
        sale.terminate(); sale.wait()
        return result
    finally:
        serve.terminate(); serve.wait()


results = []
for i in range(runs):
    r = run()
    results.append(r)
    print(f"[bench wire] run {i + 1}: {r}", file=sys.stderr)
m = lambda k: statistics.median(r[k] for r in results)
print(f"\n{stores} stores x {skus} SKUs at {rate} records/s (flash sale, skewed), {dashboards} all-stores "
      f"dashboards and one store's, gzip; {WINDOW} s measured; medians of {runs} runs\n")
print("| measure | value |")
print("|---|---:|")
print(f"| records/s read by serve while measured (the simulator's pace on this machine) | {m('applied'):,.0f} |")
print(f"| all-stores dashboard: KB/s received (gzip), median of the {dashboards} | {m('all_kbps'):.1f} |")
print(f"| all-stores dashboard: deltas per second | {m('all_fps'):.1f} |")
print(f"| one store's dashboard: KB/s received (gzip) | {m('one_kbps'):.2f} |")
print(f"| one store's dashboard: deltas per second | {m('one_fps'):.1f} |")
print(f"| consumer lag p99 / max (records, sampled every 200 ms) | {m('lag_p99'):.0f} / {m('lag_max'):.0f} |")
print(f"| all-stores `/api/snapshot` during the sale: size, time to last byte | {m('snapshot_kb'):.1f} KB, {m('snapshot_ms'):.0f} ms |")
print(f"| serve RSS at the end | {m('rss'):.0f} MB |")
