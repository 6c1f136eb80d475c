"""What the Python benchmark drivers share (bench-junk, bench-memory, bench-scale, bench-wire,
bench-cluster, bench-edges): a free port, serve's metrics as a dict, a process's RSS and CPU,
an hour-ago start time for the simulator, a stream reader that counts bytes, and for the
cluster benches the processes' environment, start, readiness and stop."""
import os, random, socket, subprocess, sys, time, urllib.request

TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def get(port, path, timeout=30):
    """The body of GET path, or "" while nothing answers."""
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout).read().decode()
    except OSError:
        return ""


def metrics(port):
    """serve's /metrics as {series: value} (empty while it does not answer)."""
    out = {}
    for line in get(port, "/metrics").splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, value = line.rsplit(" ", 1)
        try:
            out[name] = float(value)
        except ValueError:
            pass
    return out


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def start_ago(seconds):
    """An RFC 3339 time `seconds` ago: records dated then are within the broker's 7-day
    retention (a fixed date in the past is deleted within minutes once a week old)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - seconds))


def count_stream(port, path, stop, received, reopen=False):
    """Reads `path` (an SSE stream) with gzip, as a browser does, until `stop` is set,
    adding the bytes on the wire to received[0]; with `reopen`, opens it again after an
    error (a 503 while the partitions are being assigned)."""
    while not stop.is_set():
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Accept-Encoding": "gzip"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                while not stop.is_set():
                    chunk = response.read1(65536)
                    if not chunk:
                        break
                    received[0] += len(chunk)
        except OSError as error:
            print(f"[bench] {path}: {error}", file=sys.stderr)
        if not reopen:
            return
        stop.wait(1)


def cpu_seconds(pid):
    """A process's CPU seconds so far (utime + stime, from /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def bench_env(name):
    """The environment of a bench's processes: warn logs, and topics of its own
    (bench-NAME-<random>-orders, ...), so runs never share records."""
    tag = "%08x" % random.getrandbits(32)
    env = dict(os.environ, RUST_LOG="warn")
    for role in ("orders", "inventory", "activity"):
        env[f"STOREPULSE_TOPIC_{role.upper()}"] = f"bench-{name}-{tag}-{role}"
    env["STOREPULSE_DEAD_LETTER_TOPIC"] = f"bench-{name}-{tag}-dlq"
    return env


def start_role(bin_, env, role, port, cluster=None, extra=None):
    """`storepulse ROLE` on 127.0.0.1:PORT with a consumer group of its own; with `cluster`,
    in that cluster (group, transactional ids, frames and slices topics named after it)."""
    env = dict(env, STOREPULSE_HTTP_ADDR=f"127.0.0.1:{port}")
    if cluster:
        env.update({"STOREPULSE_CLUSTER_GROUP_ID": cluster, "STOREPULSE_CLUSTER_TRANSACTIONAL_PREFIX": cluster,
                    "STOREPULSE_CLUSTER_FRAMES_TOPIC": f"{cluster}-frames",
                    "STOREPULSE_CLUSTER_SLICES_TOPIC": f"{cluster}-slices"})
    env["STOREPULSE_GROUP_ID"] = f"{cluster or 'serve'}-{role}-{random.getrandbits(32):08x}"
    env.update(extra or {})
    return subprocess.Popen([bin_, role], env=env, stdout=subprocess.DEVNULL)


def ready(port, limit=900):
    """Waits until /readyz on `port` answers 200."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"port {port} never turned ready")


def stop(*processes):
    """SIGTERM each (those still running), then SIGKILL any not gone in 30 s."""
    for p in processes:
        if p.poll() is None:
            p.terminate()
    for p in processes:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill(); p.wait()
