#!/usr/bin/env python3
"""serve at a marketplace's size (not a test): `scripts/bench scale`.

Three shops of BENCH_EVENTS records each (default 2 000 000), produced unpaced by the
simulator (skewed popularity, a flash sale on 10 SKUs per store) into topics of their own:
the simulator's default 3 stores x 40 SKUs (the baseline), 1 000 stores x 1 000 SKUs
(1 M SKUs; their opening levels are the first million records), and 10 000 stores x 100
SKUs. A release serve catches up on each from scratch, BENCH_RUNS times interleaved, with
no client. Reported (medians): records/s over the catch-up (first record applied to the
last), its ratio to the 3-store shop's in the same run (CPU per event, as both use one
ingest thread), RSS once caught up and per SKU held, the mean checkpoint (bytes and stores
written; a process's first writes every store, later ones the changed stores), the
all-stores `/api/snapshot` once caught up (time to the last byte and size), and a restart:
SIGTERM (final checkpoint), a new serve of the same group, time until `/readyz` is 200."""
import os, random, statistics, subprocess, sys, time, urllib.request
from benchlib import free_port, metrics, rss_mb, start_ago

bin_ = sys.argv[1]
events = int(os.environ.get("BENCH_EVENTS", "2000000"))
runs = int(os.environ.get("BENCH_RUNS", "3"))
tag = "%08x" % random.getrandbits(32)
start = start_ago(3 * 3600)
shops = [("3 stores x 40 SKUs", 3, 40), ("1 000 stores x 1 000 SKUs", 1000, 1000),
         ("10 000 stores x 100 SKUs", 10000, 100)]


def topics(i):
    return {f"STOREPULSE_TOPIC_{r.upper()}": f"bench-scale-{tag}-{i}-{r}" for r in ("orders", "inventory", "activity")}


def timed_get(port, path):
    started = time.monotonic()
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=120).read()
    return time.monotonic() - started, len(body)


def ready_after_restart(env, port):
    """A new serve of the same group: seconds until /readyz answers 200."""
    started = time.monotonic()
    serve = subprocess.Popen([bin_, "serve"], env=env, stdout=subprocess.DEVNULL)
    try:
        while time.monotonic() - started < 600:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5).status == 200:
                    return time.monotonic() - started
            except OSError:
                pass
            time.sleep(0.05)
        raise SystemExit("serve did not turn ready after a restart")
    finally:
        serve.terminate(); serve.wait()


def longest_bucket_ms(m, histogram):
    """The upper bound (ms) of the smallest bucket of `histogram` holding every observation:
    no observation was longer."""
    total = m.get(f"{histogram}_count", 0)
    bounds = sorted(float(k.split('le="')[1].split('"')[0]) for k, v in m.items()
                    if k.startswith(f"{histogram}_bucket{{") and 'le="+Inf"' not in k and v >= total)
    return bounds[0] * 1000 if bounds and total else float("inf")


def catch_up(i, skus_held):
    port = free_port()
    env = {**os.environ, **topics(i), "STOREPULSE_HTTP_ADDR": f"127.0.0.1:{port}",
           "STOREPULSE_GROUP_ID": f"bench-scale-{tag}-{random.getrandbits(32):08x}", "RUST_LOG": "error"}
    serve = subprocess.Popen([bin_, "serve"], env=env, stdout=subprocess.DEVNULL)
    stopped = False
    try:
        first = None
        deadline = time.time() + 1800
        while time.time() < deadline:
            m = metrics(port)
            n = sum(v for k, v in m.items() if k.startswith("storepulse_records_total{"))
            now = time.monotonic()
            if n > 0 and first is None:
                first = (now, n)
            if n >= events:
                rate = (n - first[1]) / (now - first[0])
                break
            time.sleep(0.05)
        else:
            raise SystemExit("serve did not catch up")
        time.sleep(6)
        m = metrics(port)
        count = m.get("storepulse_checkpoint_size_bytes_count", 0)
        rss = rss_mb(serve.pid)
        snapshot_s, snapshot_bytes = timed_get(port, "/api/snapshot")
        result = {"rate": rate, "rss": rss, "per_sku_kb": rss * 1024 / skus_held,
                  "ckpt_mb": m.get("storepulse_checkpoint_size_bytes_sum", 0) / count / 1e6 if count else 0,
                  "ckpt_stores": m.get("storepulse_checkpoint_stores_sum", 0) / count if count else 0,
                  "ckpts": count, "snapshot_s": snapshot_s, "snapshot_mb": snapshot_bytes / 1e6,
                  "freeze_ms": m.get("storepulse_checkpoint_freeze_seconds_sum", 0) * 1000
                  / max(1, m.get("storepulse_checkpoint_freeze_seconds_count", 0)),
                  "freeze_max_ms": longest_bucket_ms(m, "storepulse_checkpoint_freeze_seconds")}
        serve.terminate(); serve.wait(); stopped = True
        result["restart_s"] = ready_after_restart(env, port)
        return result
    finally:
        if not stopped:
            serve.terminate(); serve.wait()


for i, (name, stores, skus) in enumerate(shops):
    print(f"[bench scale] producing {events} records of {name}", file=sys.stderr)
    subprocess.run([bin_, "simulate", "--quiet", "--count", str(events), "--rate", "0",
                    "--event-rate", "200", "--start", start, "--stores", str(stores), "--skus", str(skus),
                    "--popularity", "skewed", "--flash-skus", "10", "--partitions", "4"],
                   env={**os.environ, **topics(i)}, check=True, stdout=subprocess.DEVNULL)
results = {i: [] for i in range(len(shops))}
for run in range(runs):
    for i, (name, stores, skus) in enumerate(shops):
        r = catch_up(i, stores * skus)
        results[i].append(r)
        print(f"[bench scale] run {run + 1} {name}: {r['rate']:.0f} records/s, RSS {r['rss']:.0f} MB", file=sys.stderr)

med = lambda xs: statistics.median(xs)
base = med([r["rate"] for r in results[0]])
print(f"\n{events} records per shop, skewed popularity, flash sale on 10 SKUs per store; medians of {runs} runs\n")
print("| shop | SKUs held | catch-up records/s | CPU per event vs 3 stores | RSS caught up | per SKU | mean checkpoint (stores written) | ingest paused per checkpoint (mean freeze, longest ≤) | all-stores snapshot | ready after restart |")
print("|---|---|---|---|---|---|---|---|---|---|")
for i, (name, stores, skus) in enumerate(shops):
    rate = med([r["rate"] for r in results[i]])
    m = lambda k: med([r[k] for r in results[i]])
    print(f"| {name} | {stores * skus:,} | {rate:,.0f} | {base / rate:.2f}x | {m('rss'):.0f} MB "
          f"| {m('per_sku_kb'):.2f} KB | {m('ckpt_mb'):.2f} MB ({m('ckpt_stores'):,.0f} of {stores:,} stores, {m('ckpts'):.0f} checkpoints) "
          f"| {m('freeze_ms'):.2f} ms, ≤ {m('freeze_max_ms'):.2f} ms | {m('snapshot_mb'):.1f} MB in {m('snapshot_s') * 1000:.0f} ms | {m('restart_s'):.1f} s |")
