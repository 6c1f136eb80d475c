#!/usr/bin/env python3
"""A cluster against one serve (not a test): `scripts/bench cluster`.

Topics of its own, 4 partitions, records keyed by store (the cluster's producer contract),
BENCH_STORES stores x BENCH_SKUS SKUs. Three measurements, each BENCH_RUNS times, medians:

1. CPU per event. BENCH_EVENTS records produced unpaced; a release `serve` catches up
   from scratch (CPU seconds of its process, utime + stime, until its snapshot covers every
   record); then one `aggregator` (owning all 4 slices) on the same records, until an edge
   shows them all: the aggregator's CPU, and the edge's. Reported as CPU-µs per event and
   the aggregator's ratio to serve's (target <= 1.1).
2. Failover. Two aggregators and an edge, the simulator live at BENCH_RATE records/s;
   one aggregator SIGKILLed; per slice, the time from the kill until the edge's position of
   that slice moves again (the killed one's slices wait for the group's session timeout,
   3 s in scripts/stack). Reported: the longest (p50 and max over runs).
3. Added latency. serve and a cluster (one aggregator, one edge) on the same live topics,
   one SSE client on each: per delta, arrival (wall clock) minus its `as_of_ms` (the
   newest event time in it; the simulator dates events now). p50 of each; the difference
   is what the aggregator, the frames topic and the edge add (target <= +15 ms).

BENCH_PARTS (cpu,failover,latency) picks some of them."""
import json, os, random, signal, statistics, subprocess, sys, threading, time, urllib.request
from benchlib import bench_env, cpu_seconds, free_port, get, ready, start_ago, start_role, stop

bin_ = sys.argv[1]
events = int(os.environ.get("BENCH_EVENTS", "400000"))
runs = int(os.environ.get("BENCH_RUNS", "3"))
stores = int(os.environ.get("BENCH_STORES", "100"))
skus = int(os.environ.get("BENCH_SKUS", "100"))
rate = int(os.environ.get("BENCH_RATE", "2000"))
base_env = bench_env("cluster")


def position(port):
    """The snapshot's position as a list of offsets ([] while nothing answers)."""
    body = get(port, "/api/snapshot", timeout=60)
    if not body:
        return []
    return [int(x) for x in json.loads(body)["position"].split(":")[1].split(",")]


def simulate(*args, wait=True):
    command = [bin_, "simulate", "--key", "store", "--partitions", "4", "--stores", str(stores),
               "--skus", str(skus), "--flash-skus", "0", "-q", *args]
    process = subprocess.Popen(command, env=base_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if wait:
        if process.wait() != 0:
            raise SystemExit("the simulator failed")
    return process


def start(role, port, cluster=None, extra=None):
    return start_role(bin_, base_env, role, port, cluster, extra)


def wait_total(port, total, limit=900):
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if sum(position(port)) >= total:
            return
        time.sleep(0.1)
    raise SystemExit(f"port {port} never reached {total} records")


def cpu_per_event(total):
    port = free_port()
    serve = start("serve", port)
    wait_total(port, total)
    serve_cpu = cpu_seconds(serve.pid)
    stop(serve)
    cluster = f"bench-cpu-{random.getrandbits(32):08x}"
    a_port, e_port = free_port(), free_port()
    aggregator = start("aggregator", a_port, cluster)
    edge = start("edge", e_port, cluster)
    wait_total(e_port, total)
    aggregator_cpu, edge_cpu = cpu_seconds(aggregator.pid), cpu_seconds(edge.pid)
    stop(aggregator, edge)
    return serve_cpu, aggregator_cpu, edge_cpu


def slices_of(offsets):
    """Per slice (partition number), the sum of its three partitions' offsets."""
    n = len(offsets) // 3
    return [offsets[p] + offsets[n + p] + offsets[2 * n + p] for p in range(n)]


def failover():
    cluster = f"bench-fail-{random.getrandbits(32):08x}"
    ports = [free_port() for _ in range(3)]
    victim = start("aggregator", ports[0], cluster)
    time.sleep(3)  # the victim takes the slices first; the other gets half on joining
    survivor = start("aggregator", ports[1], cluster)
    edge = start("edge", ports[2], cluster)
    producer = simulate("--rate", str(rate), "--duration", "45s", "--start", start_ago(0), wait=False)
    time.sleep(15)
    before = slices_of(position(ports[2]))
    killed = time.monotonic()
    victim.send_signal(signal.SIGKILL); victim.wait()
    moved = [None] * len(before)
    last = before
    while time.monotonic() - killed < 60 and None in moved:
        now = slices_of(position(ports[2]))
        for i, (a, b) in enumerate(zip(last, now)):
            if moved[i] is None and b > a and time.monotonic() - killed > 0.2:
                moved[i] = time.monotonic() - killed
        last = now
        time.sleep(0.05)
    stop(producer, survivor, edge)
    return max(m if m is not None else float("inf") for m in moved)


def latencies(port, stop_at, out):
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/stream")
    with urllib.request.urlopen(request, timeout=30) as response:
        event = None
        while time.monotonic() < stop_at:
            line = response.readline().decode()
            if line.startswith("event: "):
                event = line[7:].strip()
            elif line.startswith("data: ") and event == "delta":
                received = time.time() * 1000
                out.append(received - json.loads(line[6:])["as_of_ms"])


def added_latency():
    cluster = f"bench-lat-{random.getrandbits(32):08x}"
    ports = [free_port() for _ in range(3)]
    serve = start("serve", ports[0])
    aggregator = start("aggregator", ports[1], cluster)
    edge = start("edge", ports[2], cluster)
    # Both caught up with what the topics hold before the live records start.
    ready(ports[0])
    wait_total(ports[2], sum(position(ports[0])))
    producer = simulate("--rate", str(rate), "--duration", "30s", "--start", start_ago(0), wait=False)
    time.sleep(5)
    stop_at = time.monotonic() + 20
    results = {0: [], 2: []}
    threads = [threading.Thread(target=latencies, args=(ports[i], stop_at, results[i])) for i in (0, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop(producer, serve, aggregator, edge)
    return statistics.median(results[0]), statistics.median(results[2])


print(f"[bench] {events} records, {stores} stores x {skus} SKUs, 4 partitions", file=sys.stderr)
simulate("--rate", "0", "--count", str(events), "--start", start_ago(2 * 3600))
total = events
rows = {"cpu": [], "fail": [], "lat": []}
# BENCH_PARTS picks measurements (cpu, failover, latency; all by default).
parts = os.environ.get("BENCH_PARTS", "cpu,failover,latency").split(",")
for run in range(runs):
    if "cpu" in parts:
        serve_cpu, aggregator_cpu, edge_cpu = cpu_per_event(total)
        rows["cpu"].append((serve_cpu, aggregator_cpu, edge_cpu))
        print(f"[bench] run {run + 1}: serve {serve_cpu:.2f} s, aggregator {aggregator_cpu:.2f} s, edge {edge_cpu:.2f} s", file=sys.stderr)
    if "failover" in parts:
        longest = failover()
        rows["fail"].append(longest)
        print(f"[bench] run {run + 1}: failover {longest:.2f} s", file=sys.stderr)
    if "latency" in parts:
        serve_p50, edge_p50 = added_latency()
        rows["lat"].append((serve_p50, edge_p50))
        print(f"[bench] run {run + 1}: latency p50 serve {serve_p50:.1f} ms, cluster {edge_p50:.1f} ms", file=sys.stderr)

med = statistics.median
print(f"\n{total} records, {stores} stores x {skus} SKUs, 4 slices; medians of {runs} runs\n")
print("| measurement | serve | cluster | ratio / difference |")
print("|---|---|---|---|")
if rows["cpu"]:
    per_event = lambda seconds: seconds * 1e6 / total
    serve_us = med(per_event(r[0]) for r in rows["cpu"])
    aggregator_us = med(per_event(r[1]) for r in rows["cpu"])
    edge_us = med(per_event(r[2]) for r in rows["cpu"])
    ratio = med(r[1] / r[0] for r in rows["cpu"])
    print(f"| CPU-µs per event, catch-up (one aggregator owning 4 slices) | {serve_us:.2f} | {aggregator_us:.2f} (edge: {edge_us:.2f}) | {ratio:.2f}× |")
if rows["fail"]:
    print(f"| aggregator SIGKILL → its slices' frames again (longest slice) | | p50 {med(rows['fail']):.1f} s, max {max(rows['fail']):.1f} s | session timeout 3 s |")
if rows["lat"]:
    s, c = med(r[0] for r in rows["lat"]), med(r[1] for r in rows["lat"])
    # The difference within each run (both clients on the same records at the same time),
    # then its median: the runs' absolute latencies differ more than what the cluster adds.
    added = med(r[1] - r[0] for r in rows["lat"])
    print(f"| producer → client, p50 of deltas at {rate} records/s | {s:.1f} ms | {c:.1f} ms | {added:+.1f} ms (runs {', '.join(f'{r[1] - r[0]:+.1f}' for r in rows['lat'])}) |")
