"""What the Python benchmark drivers share (bench-junk, bench-memory, bench-scale, bench-wire):
a free port, serve's metrics as a dict, a process's RSS, an hour-ago start time for the
simulator, a stream reader that counts bytes."""
import socket, sys, time, urllib.request


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
