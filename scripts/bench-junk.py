#!/usr/bin/env python3
"""A buggy producer's flood against serve (not a test): `scripts/bench junk`.

Topics of its own. First a real shop: BENCH_STORES stores x BENCH_SKUS SKUs, BENCH_EVENTS
records (simulator seed 1, skewed popularity, a flash sale). Then, into the same topics, a
buggy producer's flood of BENCH_JUNK records (seed 2, --junk-per-mille 1000: every record
gets a random store id, an order total of 2^63 - 1, or a date ten years ahead without a
Kafka timestamp). serve (release build, default limits) catches up from scratch twice per
run, BENCH_RUNS times: on the real shop alone, and on the shop plus the flood.

Reported (medians): serve's RSS once caught up (before any snapshot is asked for), with
and without the flood (the growth is what the flood cost); stores held; poison records by reason; checkpoints written while the
flood was read and the size of the last one; whether every real store's view is
byte-for-byte the same in both runs (the flood moved no real number). Prints a Markdown
table."""
import json, os, random, statistics, subprocess, sys, time
from benchlib import free_port, get, metrics, rss_mb, start_ago

bin_ = sys.argv[1]
stores = int(os.environ.get("BENCH_STORES", "8"))
skus = int(os.environ.get("BENCH_SKUS", "100"))
events = int(os.environ.get("BENCH_EVENTS", "200000"))
junk = int(os.environ.get("BENCH_JUNK", "1000000"))
runs = int(os.environ.get("BENCH_RUNS", "3"))
tag = "%08x" % random.getrandbits(32)
# One start for every run, an hour ago: within the broker's retention (a week), and the
# same for the clean and the flooded topics so their real records are identical.
start = start_ago(3600)
topics = {f"STOREPULSE_TOPIC_{r.upper()}": f"bench-junk-{tag}-{r}" for r in ("orders", "inventory", "activity")}
clean_topics = {f"STOREPULSE_TOPIC_{r.upper()}": f"bench-clean-{tag}-{r}" for r in ("orders", "inventory", "activity")}


def simulate(topic_env, count, seed, extra):
    env = {**os.environ, **topic_env}
    subprocess.run([bin_, "simulate", "--quiet", "--count", str(count), "--rate", "0",
                    "--event-rate", "1000", "--start", start,
                    "--stores", str(stores), "--skus", str(skus), "--popularity", "skewed",
                    "--partitions", "4", "--seed", str(seed), *extra],
                   env=env, check=True, stdout=subprocess.DEVNULL)


def catch_up(topic_env, total):
    port = free_port()
    env = {**os.environ, **topic_env, "STOREPULSE_HTTP_ADDR": f"127.0.0.1:{port}",
           "STOREPULSE_GROUP_ID": f"bench-junk-{tag}-{random.getrandbits(32):08x}",
           "STOREPULSE_DEAD_LETTER_TOPIC": f"bench-junk-{tag}-dlq", "RUST_LOG": "error"}
    serve = subprocess.Popen([bin_, "serve"], env=env, stdout=subprocess.DEVNULL)
    try:
        deadline = time.time() + 1200
        checkpoints_at_clean = None
        while time.time() < deadline:
            m = metrics(port)
            read = sum(v for k, v in m.items() if k.startswith("storepulse_records_total{"))
            if checkpoints_at_clean is None and read >= events:
                checkpoints_at_clean = m.get("storepulse_checkpoints_total", 0)
            if read >= total:
                break
            time.sleep(0.2)
        else:
            raise SystemExit("serve did not catch up")
        time.sleep(6)  # one more checkpoint interval: the last one covers everything
        m = metrics(port)
        rss = rss_mb(serve.pid)  # before the snapshot below is built
        snapshot = json.loads(get(port, "/api/snapshot"))
        real, after = {}, None
        while True:  # the stores, a page at a time; each real one's own view
            page = json.loads(get(port, "/api/stores?limit=1000" + (f"&after={after}" if after else "")))
            for store in page["items"]:
                if not store.startswith("junk-"):
                    real[store] = json.loads(get(port, f"/api/snapshot?store={store}"))["stores"][store]
            after = page["next"]
            if after is None:
                break
        count = m.get("storepulse_checkpoint_size_bytes_count", 0)
        result = {
            "rss_mb": rss,
            "stores": snapshot["store_count"],
            "real": real,
            "poison": {k.split('"')[1]: v for k, v in m.items()
                       if k.startswith("storepulse_poison_records_total{") and v > 0},
            "checkpoints_during": m.get("storepulse_checkpoints_total", 0) - (checkpoints_at_clean or 0),
            "checkpoint_failures": m.get("storepulse_checkpoint_failures_total", 0),
            "checkpoint_mean_kb": (m.get("storepulse_checkpoint_size_bytes_sum", 0) / count / 1024) if count else 0,
        }
        return result
    finally:
        serve.terminate(); serve.wait()


print(f"[bench junk] producing {events} records of {stores} stores x {skus} SKUs, then {junk} junk records", file=sys.stderr)
simulate(clean_topics, events, 1, [])
simulate(topics, events, 1, [])
simulate(topics, junk, 2, ["--junk-per-mille", "1000", "--flash-skus", "0"])
rows = []
for run in range(runs):
    clean = catch_up(clean_topics, events)
    flood = catch_up(topics, events + junk)
    same = clean["real"] == {k: v for k, v in flood["real"].items() if k in clean["real"]}
    print(f"[bench junk] run {run + 1}: RSS {clean['rss_mb']:.0f} -> {flood['rss_mb']:.0f} MB, "
          f"stores {clean['stores']} -> {flood['stores']}, poison {flood['poison']}, "
          f"checkpoints during the flood {flood['checkpoints_during']:.0f}, real stores equal: {same}", file=sys.stderr)
    rows.append((clean, flood, same))

med = lambda xs: statistics.median(xs)
clean_rss = med([c["rss_mb"] for c, _, _ in rows])
flood_rss = med([f["rss_mb"] for _, f, _ in rows])
print(f"\n{stores} stores x {skus} SKUs, {events} real records, then {junk} junk records; medians of {runs} runs\n")
print("| measure | real shop only | shop + flood |")
print("|---|---|---|")
print(f"| serve RSS once caught up | {clean_rss:.0f} MB | {flood_rss:.0f} MB (+{flood_rss - clean_rss:.0f} MB) |")
print(f"| stores held | {rows[0][0]['stores']} | {rows[0][1]['stores']} |")
print(f"| poison records by reason | {rows[0][0]['poison'] or 'none'} | {rows[0][1]['poison']} |")
print(f"| checkpoints written while the flood was read | | {med([f['checkpoints_during'] for _, f, _ in rows]):.0f} (failures: {med([f['checkpoint_failures'] for _, f, _ in rows]):.0f}) |")
print(f"| mean checkpoint size | {med([c['checkpoint_mean_kb'] for c, _, _ in rows]):.0f} KB | {med([f['checkpoint_mean_kb'] for _, f, _ in rows]):.0f} KB |")
print(f"| every real store's view the same | | {all(s for _, _, s in rows)} |")
