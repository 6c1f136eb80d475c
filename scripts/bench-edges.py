#!/usr/bin/env python3
"""Edges against one serve (not a test): `scripts/bench edges`.

Topics of its own, 4 partitions, records keyed by store, BENCH_STORES x BENCH_SKUS, the
simulator live at BENCH_RATE records/s. Two measurements, each BENCH_RUNS times, medians:

1. CPU per delivery. A `serve` and a cluster (one aggregator, one edge) on the same live
   topics at the same time, BENCH_CPU_CLIENTS (500) SSE clients on each (two in five on every store,
   the others on one store each, as the drill's dashboards); over BENCH_SECONDS, each
   process's CPU (utime + stime) divided by the deltas its clients received. serve's
   includes its ingest (reading, decoding, aggregating); the edge's is what fan-out costs
   on a node that only reads frames. Reported as CPU-µs per delivery and the edge's ratio
   to serve's (target <= 1.0).
2. Edge failover. One aggregator, two edges behind HAProxy (round robin, no stickiness,
   health from /readyz, `retry-on` as docs/operations.md gives it), BENCH_CLIENTS (1 000)
   clients through it, each a browser's EventSource: on a lost connection it waits the stream's
   `retry:` (the edges' `stream.retry`, BENCH_EDGE_RETRY: 250ms), then reconnects with
   Last-Event-ID. One edge SIGKILLed; for each of
   its clients, the time from the kill to the first event on the new connection. Reported:
   p50 and the slowest client (median over runs), and how many resumes were not exact (a
   `snapshot` or `resync` instead of deltas after the client's id; target: none)."""
import asyncio, json, os, random, re, signal, statistics, subprocess, sys, tempfile, time
from benchlib import bench_env, cpu_seconds, free_port, ready, start_ago, start_role, stop

bin_ = sys.argv[1]
runs = int(os.environ.get("BENCH_RUNS", "3"))
clients = int(os.environ.get("BENCH_CLIENTS", "1000"))
cpu_clients = int(os.environ.get("BENCH_CPU_CLIENTS", "500"))
seconds = int(os.environ.get("BENCH_SECONDS", "15"))
stores = int(os.environ.get("BENCH_STORES", "100"))
skus = int(os.environ.get("BENCH_SKUS", "100"))
rate = int(os.environ.get("BENCH_RATE", "2000"))
edge_retry = os.environ.get("BENCH_EDGE_RETRY", "250ms")
base_env = bench_env("edges")
STORE_IDS = [f"store-{i + 1:05}" for i in range(stores)]


def simulate(*args):
    command = [bin_, "simulate", "--key", "store", "--partitions", "4", "--stores", str(stores),
               "--skus", str(skus), "--flash-skus", "0", "-q", *args]
    return subprocess.Popen(command, env=base_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start(role, port, cluster=None, extra=None):
    return start_role(bin_, base_env, role, port, cluster, extra)


def path_of(i):
    """Two in five watch every store, the others one store each."""
    return "/api/stream" if i % 5 in (0, 3) else f"/api/stream?store={STORE_IDS[i % len(STORE_IDS)]}"


class Client:
    """One dashboard: an EventSource's reconnection (wait `retry`, then Last-Event-ID)."""

    def __init__(self, port, path):
        self.port, self.path = port, path
        self.last_id = None
        self.retry = 1.0
        self.deltas = 0
        self.connections = 0
        self.lost_at = None         # when the last connection was lost
        self.resumed_at = None      # when the last resumed connection gave its first event
        self.inexact = 0            # resumes answered with a snapshot or a resync
        self.refused = {}           # statuses other than 200, by status line
        self.opened_at = None       # when the last stream was answered 200
        self.connected_at = None    # when the last connection to the balancer was made
        self.attempts = 0           # connections tried
        self.stopping = False
        self.address = f"10.{random.randrange(256)}.{random.randrange(256)}.{random.randrange(1, 255)}"

    async def run(self):
        while not self.stopping:
            try:
                await self.once()
            except (OSError, asyncio.IncompleteReadError, ConnectionError, ValueError):
                pass
            self.lost_at = time.monotonic()
            if not self.stopping:
                await asyncio.sleep(self.retry)

    async def once(self):
        self.attempts += 1
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.connected_at = time.monotonic()
        resume = f"Last-Event-ID: {self.last_id}\r\n" if self.last_id else ""
        # Each dashboard its own address, as browsers have (the edges trust the balancer's
        # X-Forwarded-For: their per-address limits see users, not the balancer).
        writer.write((f"GET {self.path} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n"
                      f"X-Forwarded-For: {self.address}\r\n{resume}\r\n").encode())
        await writer.drain()
        status = await reader.readline()
        if b" 200 " not in status:
            key = status.decode(errors="replace").strip()
            self.refused[key] = self.refused.get(key, 0) + 1
            writer.close()
            return
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        self.opened_at = time.monotonic()
        self.connections += 1
        # Raw reads, no chunk decoding or event parsing: a thousand clients share one
        # Python thread, and a busy loop reads more per call instead of falling behind.
        # The last id is the last "id: " line; the first event of a resumed stream says
        # whether the resume was exact (deltas) or not (a snapshot or a resync).
        resumed, first, tail = self.last_id is not None, b"", b""
        try:
            while not self.stopping:
                data = await reader.read(65536)
                if not data:
                    break
                text = tail + data
                while first is not None:
                    first += data
                    data = b""
                    end = first.find(b"\n\n")
                    if end < 0:
                        break
                    block, first = first[:end], first[end + 2:]
                    if b"event: " not in block:
                        # The `retry:` line (after a chunk's size: the reads are raw):
                        # how long this EventSource waits to reconnect.
                        retry = re.search(rb"(?m)^retry: (\d+)$", block)
                        if retry:
                            self.retry = int(retry.group(1)) / 1000
                        continue
                    if resumed:
                        self.resumed_at = time.monotonic()
                        if b"event: snapshot" in block or b"event: resync" in block:
                            self.inexact += 1
                    first = None
                self.deltas += text.count(b"event: delta") - tail.count(b"event: delta")
                at = text.rfind(b"\nid: ")
                if at >= 0:
                    line_end = text.find(b"\n", at + 5)
                    if line_end >= 0:
                        self.last_id = text[at + 5:line_end].decode()
                tail = text[-512:]
        finally:
            writer.close()


async def with_clients(port_of, count, body):
    """Runs `count` clients (client i on port_of(i)) while `body(clients)` runs."""
    crowd = [Client(port_of(i), path_of(i)) for i in range(count)]
    tasks = [asyncio.create_task(c.run()) for c in crowd]
    try:
        return await body(crowd)
    finally:
        for c in crowd:
            c.stopping = True
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def cpu_per_delivery():
    cluster = f"bench-edge-cpu-{random.getrandbits(32):08x}"
    ports = [free_port() for _ in range(3)]
    serve, aggregator, edge = start("serve", ports[0]), start("aggregator", ports[1], cluster), start("edge", ports[2], cluster)
    for p in ports:
        ready(p)
    producer = simulate("--rate", str(rate), "--duration", f"{seconds + 40}s", "--start", start_ago(0))

    async def measure(crowd):
        await asyncio.sleep(5)  # every client connected and past its snapshot
        before = [sum(c.deltas for c in crowd[i::2]) for i in (0, 1)]
        cpu = [cpu_seconds(serve.pid), cpu_seconds(edge.pid)]
        await asyncio.sleep(seconds)
        after = [sum(c.deltas for c in crowd[i::2]) for i in (0, 1)]
        used = [cpu_seconds(serve.pid) - cpu[0], cpu_seconds(edge.pid) - cpu[1]]
        return [used[i] * 1e6 / max(1, after[i] - before[i]) for i in (0, 1)], [after[i] - before[i] for i in (0, 1)]

    try:
        # Clients alternate: even ones on serve, odd ones on the edge.
        (serve_us, edge_us), deliveries = asyncio.run(
            with_clients(lambda i: ports[0] if i % 2 == 0 else ports[2], 2 * cpu_clients, measure))
    finally:
        stop(producer, serve, aggregator, edge)
    return serve_us, edge_us, deliveries


def balancer(edge_ports):
    port = free_port()
    servers = "".join(f"    server edge{i} 127.0.0.1:{p} check\n" for i, p in enumerate(edge_ports))
    config = ("global\n    maxconn 5000\n"
              "defaults\n    mode http\n    timeout connect 1s\n    timeout client 60s\n    timeout server 60s\n"
              "    timeout check 1s\n    retries 3\n    retry-on conn-failure empty-response response-timeout 502 503\n"
              "    option redispatch 1\n    option forwardfor\n"
              f"frontend dashboards\n    bind 127.0.0.1:{port}\n    default_backend edges\n"
              "backend edges\n    balance roundrobin\n    option httpchk GET /readyz\n    http-check expect status 200\n"
              f"    default-server inter 300ms fall 2 rise 1\n{servers}")
    folder = tempfile.mkdtemp()
    path = os.path.join(folder, "haproxy.cfg")
    with open(path, "w") as f:
        f.write(config)
    process = subprocess.Popen(["haproxy", "-db", "-f", path], stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    return process, port


def edge_failover():
    cluster = f"bench-edge-fail-{random.getrandbits(32):08x}"
    a_port, e_ports = free_port(), [free_port(), free_port()]
    aggregator = start("aggregator", a_port, cluster)
    edges = [start("edge", p, cluster, {"STOREPULSE_TRUSTED_PROXIES": "127.0.0.1",
                                        "STOREPULSE_STREAM_RETRY": edge_retry}) for p in e_ports]
    for p in (a_port, *e_ports):
        ready(p)
    haproxy, port = balancer(e_ports)
    producer = simulate("--rate", str(rate), "--duration", "60s", "--start", start_ago(0))

    async def measure(crowd):
        await asyncio.sleep(8)  # connected, spread over both edges, live
        connections = {id(c): c.connections for c in crowd}
        attempts_before = {id(c): c.attempts for c in crowd}
        edges[0].send_signal(signal.SIGKILL)
        edges[0].wait()
        killed = time.monotonic()
        await asyncio.sleep(2)
        # The killed edge's clients: their connection was lost after the kill (the kernel
        # closes a killed process's sockets at once).
        cut = [c for c in crowd if c.lost_at is not None and c.lost_at >= killed and connections[id(c)] > 0]
        back = lambda c: c.resumed_at is not None and c.resumed_at > killed
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(back(c) for c in cut):
            await asyncio.sleep(0.05)
        times = [c.resumed_at - killed for c in cut if back(c)]
        opened = [c.opened_at - killed for c in cut if back(c)]
        others = sum(1 for c in crowd if c not in cut and c.connections != connections[id(c)])
        refused = {}
        for c in cut:
            for k, v in c.refused.items():
                refused[k] = refused.get(k, 0) + v
        connected = [c.connected_at - killed for c in cut if back(c)]
        attempts = [c.attempts - attempts_before[id(c)] for c in cut]
        lost = [c.lost_at - killed for c in cut]
        print(f"[bench] the killed edge's clients: saw the loss p50 {statistics.median(lost or [0]):.2f} s, "
              f"connected again p50 {statistics.median(connected or [0]):.2f} s "
              f"({statistics.median(attempts or [0]):.0f} attempts, most {max(attempts or [0])}), "
              f"answered 200 again p50 {statistics.median(opened or [0]):.2f} s; "
              f"refused on the way: {refused or 'none'}", file=sys.stderr)
        return times, len(cut), len(cut) - len(times), sum(c.inexact for c in cut), others

    try:
        result = asyncio.run(with_clients(lambda i: port, clients, measure))
    finally:
        stop(producer, aggregator, *edges[1:], haproxy)
    return result


print(f"[bench] {stores} stores x {skus} SKUs, 4 partitions, {rate} records/s, {clients} clients", file=sys.stderr)
# The topics, and a shop's history before the live records.
if simulate("--rate", "0", "--count", "20000", "--start", start_ago(3600)).wait() != 0:
    raise SystemExit("the simulator failed")
rows = {"cpu": [], "fail": []}
parts = os.environ.get("BENCH_PARTS", "cpu,failover").split(",")
for run in range(runs):
    if "cpu" in parts:
        serve_us, edge_us, deliveries = cpu_per_delivery()
        rows["cpu"].append((serve_us, edge_us, deliveries))
        print(f"[bench] run {run + 1}: CPU-µs per delivery serve {serve_us:.2f}, edge {edge_us:.2f} "
              f"({deliveries[0]} and {deliveries[1]} deliveries)", file=sys.stderr)
    if "failover" not in parts:
        continue
    times, cut, late, inexact, others = edge_failover()
    if not times:
        raise SystemExit("no client of the killed edge came back")
    p50, slowest = statistics.median(times), max(times)
    rows["fail"].append((p50, slowest, cut, late, inexact))
    print(f"[bench] run {run + 1}: edge SIGKILL: {cut} clients cut, back p50 {p50:.2f} s, slowest {slowest:.2f} s, "
          f"{late} not back in 30 s, {inexact} resumes not exact, {others} others reconnected", file=sys.stderr)

med = statistics.median
print(f"\n{stores} stores x {skus} SKUs, {rate} records/s; medians of {runs} runs\n")
print("| measurement | serve | cluster | ratio |")
print("|---|---|---|---|")
if rows["cpu"]:
    c = rows["cpu"]
    s, e = med(r[0] for r in c), med(r[1] for r in c)
    per_client = lambda n: n / cpu_clients / seconds
    print(f"| CPU-µs per delivery, {cpu_clients} clients each, live | {s:.2f} | edge {e:.2f} | {med(r[1] / r[0] for r in c):.2f}× |")
    print(f"| deltas per client-second | {med(per_client(r[2][0]) for r in c):.1f} | edge {med(per_client(r[2][1]) for r in c):.1f} | |")
if rows["fail"]:
    f = rows["fail"]
    print(f"| edge SIGKILL → its clients' first event on the other edge ({clients} clients through HAProxy, "
          f"retry {edge_retry}) | | "
          f"p50 {med(r[0] for r in f):.2f} s, slowest {med(r[1] for r in f):.2f} s (worst run {max(r[1] for r in f):.2f} s); "
          f"{med(r[2] for r in f):.0f} clients cut; {sum(r[3] for r in f)} not back, {sum(r[4] for r in f)} resumes not exact | |")
