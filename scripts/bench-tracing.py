#!/usr/bin/env python3
"""Tracing overhead on serve's catch-up (not a test): `scripts/bench tracing`.

Three topic sets of BENCH_EVENTS records from the simulator: every record's traceparent
sampled, 1 % sampled (the simulator's sampler, traceidratio 0.01), none sampled
(always_off: every record still carries a traceparent, flagged 00). serve catches up on
them from scratch: no endpoint (off); an endpoint on the none set (the header check
only); on the 1 % set, into Jaeger and into a closed port (spans built and exported, but
no collector spending CPU on the same two cores); with headers not read and serve's own
1 % root sampler; on the all set (100 %); BENCH_RUNS times interleaved;
events/s is records over the time from the first record applied to the last (from
`storepulse_records_total`, polled every 20 ms). Prints a Markdown table of medians."""
import json, os, random, statistics, subprocess, sys, time, urllib.request
from benchlib import free_port, start_ago

bin_ = sys.argv[1]
events = int(os.environ.get("BENCH_EVENTS", "1000000"))
runs = int(os.environ.get("BENCH_RUNS", "3"))
otlp = "http://127.0.0.1:" + os.environ.get("STOREPULSE_JAEGER_OTLP_PORT", "14318")
tag = "%08x" % random.getrandbits(32)
start = start_ago(3600)  # within the broker's retention

def topics(name):
    return {f"STOREPULSE_TOPIC_{r.upper()}": f"bench-tracing-{tag}-{name}-{r}" for r in ("orders", "inventory", "activity")}

def simulate(name, extra):
    env = {**os.environ, **topics(name), **extra}
    subprocess.run([bin_, "simulate", "--quiet", "--count", str(events), "--rate", "0",
                    "--start", start, "--partitions", "4"], env=env, check=True,
                   stdout=subprocess.DEVNULL)


def records(port):
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return 0
    return sum(int(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith("storepulse_records_total{"))

def catch_up(name, endpoint=None, extra=None):
    port = free_port()
    env = {**os.environ, **topics(name), "STOREPULSE_HTTP_ADDR": f"127.0.0.1:{port}",
           "STOREPULSE_GROUP_ID": f"bench-tracing-{tag}-{random.getrandbits(32):08x}", "RUST_LOG": "error"}
    for k in list(env):
        if k.startswith("OTEL_"):
            del env[k]
    if endpoint:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    env.update(extra or {})
    serve = subprocess.Popen([bin_, "serve"], env=env, stdout=subprocess.DEVNULL)
    try:
        first = None
        deadline = time.time() + 600
        while time.time() < deadline:
            n = records(port)
            now = time.monotonic()
            if n > 0 and first is None:
                first = (now, n)
            if n >= events:
                return (n - first[1]) / (now - first[0])
            time.sleep(0.02)
        raise SystemExit("serve did not catch up")
    finally:
        serve.kill(); serve.wait()

simulate("all", {})  # no exporter: every traceparent is a random sampled one
sim = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp, "OTEL_SERVICE_NAME": "bench-simulate"}
simulate("1pc", {**sim, "OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"})
simulate("none", {**sim, "OTEL_TRACES_SAMPLER": "always_off"})
closed = f"http://127.0.0.1:{free_port()}"  # nothing listens: export fails at once
modes = {
    "off (no endpoint)": ("all", None),
    "endpoint, 0 % sampled (header check only)": ("none", otlp),
    "1 %, into Jaeger": ("1pc", otlp),
    "1 %, collector unreachable": ("1pc", closed),
    "1 %, own sampler, headers not read (telemetry.producer_context = false)": ("all", otlp, {
        "STOREPULSE_TRACE_PRODUCER_CONTEXT": "false", "OTEL_TRACES_SAMPLER": "traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.01"}),
    "100 %, into Jaeger": ("all", otlp),
}
results = {mode: [] for mode in modes}
for _ in range(runs):
    for mode, (name, endpoint, *extra) in modes.items():
        results[mode].append(catch_up(name, endpoint, *extra))
base = statistics.median(results["off (no endpoint)"])
print(f"serve catch-up of {events:,} records by tracing mode, {runs} interleaved runs:\n")
print("| tracing | events/s (median) | runs | vs off |")
print("|---|---:|---|---:|")
for mode, values in results.items():
    m = statistics.median(values)
    print(f"| {mode} | {m:,.0f} | {' / '.join(f'{v:,.0f}' for v in values)} | {m / base:.3f} |")
