#!/usr/bin/env python3
"""Turns bench/results (results.json, compile-*.txt) into docs/benchmarks.md and docs/bench-*.png.

Medians over repeats with min–max spread; voided runs (any error) are listed but left out.
Ratios: ours ÷ best peer (best of HAProxy, nginx and, for bulk, HAProxy+splice) and ours ÷ direct.
Usage: report.py RESULTS_DIR DOCS_DIR
"""

import json
import os
import platform
import re
import subprocess
import sys

RES, DOCS = sys.argv[1], sys.argv[2]
os.makedirs(DOCS, exist_ok=True)
HERE = os.path.dirname(os.path.abspath(__file__))
data = json.load(open(os.path.join(RES, "results.json")))
META, RUNS = data["meta"], data["runs"]
PEERS = ["haproxy", "nginx"]
ORDER = ["direct", "haproxy", "haproxy-splice", "nginx", "isthmus"]


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    if not n:
        return None
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def runs(scen, who):
    return [r for r in RUNS if r["scenario"] == scen and r["who"] == who and not r.get("void")]


def voids(scen):
    return [r for r in RUNS if r["scenario"] == scen and r.get("void")]


def metric(scen, who, fn):
    xs = []
    for r in runs(scen, who):
        try:
            v = fn(r)
        except (KeyError, ZeroDivisionError, TypeError):
            continue
        if v is not None:
            xs.append(v)
    return xs


def stat(xs):
    return (median(xs), min(xs), max(xs)) if xs else (None, None, None)


def fmt(v, nd=1):
    if v is None:
        return "—"
    if abs(v) >= 1000 and nd <= 1:
        return f"{v:,.0f}"
    return f"{v:.{nd}f}"


def cell(xs, nd=1):
    m, lo, hi = stat(xs)
    if m is None:
        return "—"
    if len(xs) == 1:
        return fmt(m, nd)
    return f"{fmt(m, nd)} ({fmt(lo, nd)}–{fmt(hi, nd)})"


def ratio(a, b):
    if a is None or b in (None, 0):
        return None
    return a / b


def rfmt(x):
    return "—" if x is None else f"{x:.2f}×"


def who_list(scen):
    return [w for w in ORDER if any(r["scenario"] == scen and r["who"] == w for r in RUNS)]


def cpu_per_req_us(r):
    return r["proxy_cpu_s"] / r["requests"] * 1e6


def loads(scen):
    las = sorted({r["loadavg"] for r in RUNS if r["scenario"] == scen})
    if not las:
        return "—"
    firsts = [float(x.split()[0]) for x in las]
    return f"{min(firsts):.2f}–{max(firsts):.2f}"


lines = []
P = lines.append
summary = []  # (target, ours, best peer/ref, verdict)
plots = {}


def best_peer(values, higher_better, peers=PEERS):
    cands = [(values[p], p) for p in peers if values.get(p) is not None]
    if not cands:
        return None, None
    return (max if higher_better else min)(cands)


def sat_table(scen, title, unit):
    ws = who_list(scen)
    if not ws:
        return
    P(f"### {title}\n")
    P(f"Load average (1 min) during these runs: {loads(scen)}.\n")
    P(f"| Path | {unit} | proxy CPU µs/request | origin CPU µs/request | ÷ direct (throughput) |")
    P("|---|---|---|---|---|")
    rps = {w: median(metric(scen, w, lambda r: r.get("rps", r.get("per_sec")))) for w in ws}
    cpu = {w: median(metric(scen, w, cpu_per_req_us)) for w in ws}
    for w in ws:
        pc = "(origin is the server)" if w == "direct" else cell(metric(scen, w, cpu_per_req_us))
        oc = cell(metric(scen, w, lambda r: r["origin_cpu_s"] / r["requests"] * 1e6))
        P(f"| {w} | {cell(metric(scen, w, lambda r: r.get('rps', r.get('per_sec'))), 0)} | {pc} | {oc} | "
          f"{rfmt(ratio(rps.get(w), rps.get('direct')))} |")
    b_rps, bp = best_peer(rps, True)
    b_cpu, bpc = best_peer(cpu, False)
    P("")
    P(f"isthmus ÷ best peer: throughput {rfmt(ratio(rps.get('isthmus'), b_rps))} (best: {bp}), "
      f"CPU per request {rfmt(ratio(cpu.get('isthmus'), b_cpu))} (best: {bpc}); "
      f"isthmus ÷ direct throughput {rfmt(ratio(rps.get('isthmus'), rps.get('direct')))}.\n")
    note_voids(scen)
    plots.setdefault("throughput", []).append((title, {w: ratio(rps.get(w), rps.get("direct")) for w in ws if w != "direct"}))
    plots.setdefault("cpu", []).append((title, {w: cpu.get(w) for w in ws if w != "direct"}))
    return cpu, b_cpu, bpc


def note_voids(scen):
    v = voids(scen)
    if v:
        P(f"Void runs (left out): " + "; ".join(f"{r['who']} #{r['repeat']}: {r['void'][:120]}" for r in v) + "\n")


def lat_table(prefix, title):
    out = {}
    for frac in (25, 50):
        scen = f"{prefix}_{frac}"
        ws = who_list(scen)
        if not ws:
            continue
        rate = runs(scen, ws[0])[0]["rate"] if runs(scen, ws[0]) else "?"
        P(f"### {title} at {frac}% of peak ({rate} requests/s)\n")
        P(f"Load average (1 min): {loads(scen)}. Latency in ms, median of {META['repeats']} runs (min–max).\n")
        P("| Path | p50 | p99 | p99.9 | added p50 | added p99 | added p99.9 | proxy CPU µs/req |")
        P("|---|---|---|---|---|---|---|---|")
        d = {k: median(metric(scen, "direct", lambda r, k=k: r[k])) for k in ("p50_ms", "p99_ms", "p999_ms")}
        added = {}
        for w in ws:
            vals = {k: metric(scen, w, lambda r, k=k: r[k]) for k in ("p50_ms", "p99_ms", "p999_ms")}
            meds = {k: median(v) for k, v in vals.items()}
            add = {k: (meds[k] - d[k]) if (meds[k] is not None and d[k] is not None and w != "direct") else None
                   for k in meds}
            added[w] = add
            pc = "—" if w == "direct" else cell(metric(scen, w, cpu_per_req_us))
            P(f"| {w} | {cell(vals['p50_ms'], 3)} | {cell(vals['p99_ms'], 3)} | {cell(vals['p999_ms'], 3)} | "
              f"{fmt(add['p50_ms'], 3)} | {fmt(add['p99_ms'], 3)} | {fmt(add['p999_ms'], 3)} | {pc} |")
        bp99, bp = best_peer({w: added[w]["p99_ms"] for w in added}, False)
        ours = added.get("isthmus", {}).get("p99_ms")
        P("")
        P(f"Added p99: isthmus {fmt(ours, 3)} ms vs best peer ({bp}) {fmt(bp99, 3)} ms.\n")
        note_voids(scen)
        out[frac] = (ours, bp99, bp)
        plots.setdefault("latency", []).append((f"{title} {frac}%", {w: added[w] for w in ws if w != "direct"}))
    return out


def simple_table(scen, title, cols):
    """cols: list of (header, fn, digits)."""
    ws = who_list(scen)
    if not ws:
        return {}
    P(f"### {title}\n")
    P(f"Load average (1 min): {loads(scen)}.\n")
    P("| Path | " + " | ".join(c[0] for c in cols) + " |")
    P("|---|" + "---|" * len(cols))
    meds = {}
    for w in ws:
        row = []
        for h, fn, nd, *_ in cols:
            xs = metric(scen, w, fn)
            meds.setdefault(h, {})[w] = median(xs)
            row.append("—" if (w == "direct" and "proxy" in h) else cell(xs, nd))
        P(f"| {w} | " + " | ".join(row) + " |")
    P("")
    parts = []
    for h, fn, nd, *hb in cols:
        if not hb:
            continue
        vals = meds.get(h, {})
        peers = [p for p in ("haproxy", "haproxy-splice", "nginx") if p in vals]
        b, bp = best_peer(vals, hb[0], peers)
        txt = f"{h}: isthmus ÷ best peer {rfmt(ratio(vals.get('isthmus'), b))} (best: {bp})"
        if "proxy" not in h and vals.get("direct"):
            txt += f", isthmus ÷ direct {rfmt(ratio(vals.get('isthmus'), vals.get('direct')))}"
        parts.append(txt)
    if parts:
        P("; ".join(parts) + ".\n")
    note_voids(scen)
    return meds


# ------------------------------------------------------------------ document

uname = platform.uname()
cpu_model = ""
try:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
except OSError:
    pass


def ver(cmd):
    try:
        r = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=10)
        return (r.stdout + r.stderr).strip().splitlines()[0]
    except Exception:  # noqa: BLE001
        return "?"


P("# Benchmarks: isthmus vs HAProxy, nginx and a direct connection\n")
P("**Reproduce:** `bench/run.sh` (installs haproxy, nginx, libnginx-mod-stream, wrk and nghttp2-client "
  "from Debian, builds `isthmus` and the `bench/harness` load generator in release, runs every scenario, "
  "then rewrites this file and `docs/bench-*.png`). Knobs (listed at the top of `bench/run.sh`): `BENCH_SECS`, "
  "`BENCH_REPEATS`, `BENCH_IDLE_CONNS`, `BENCH_ONLY`, `BENCH_SKIP_COMPILE`, `BENCH_PROFILE`, `BENCH_NICE`, "
  "`BENCH_FROM_HEAD`/`BENCH_REF`. Raw per-run records: "
  "`bench/results/results.json`.\n")
P("This file is generated by `bench/report.py`; the analysis section comes from `bench/analysis.md`.\n")
P("## Machine and method\n")
P(f"- isthmus commit measured: `{META.get('commit', '?')}` (release build).")
if META.get("note"):
    P(f"- {META['note']}")
P(f"- Run started {META['started']}; {META['repeats']} repeats × {META['secs']} s per scenario and path, "
  f"interleaved (direct, HAProxy, nginx, isthmus, then the next repeat).")
P(f"- `uptime` at start: `{META['uptime_at_start']}`. The machine has 2 vCPUs and is **shared with other "
  "sessions compiling Rust**; the per-table load averages show how busy it was. With load averages above 2, "
  "other processes competed for both CPUs during the runs, so absolute numbers are depressed and noisy; "
  "ratios within one run are the headline, as the protocol says.")
P(f"- CPU: {cpu_model or '?'}; kernel {uname.release}; {os.cpu_count()} CPUs.")
P(f"- Pinning: load generators on CPU {META['loadgen_cpu']}; origin and proxy under test on CPU "
  f"{META['server_cpu']} (`taskset`). HAProxy `nbthread 1`, nginx `worker_processes 1`; "
  + (f"isthmus `--concurrency {META['isthmus_concurrency']}` "
     + ("(one current-thread tokio runtime). " if str(META['isthmus_concurrency']) == "1" else "(tokio workers on the same CPU). ")
     if META.get("isthmus_concurrency") else "isthmus runs its fixed 2-worker tokio runtime (both threads confined to the same CPU). ")
  + f"Scheduling priority of servers and load generators: nice {META.get('nice', '0')}.")
P(f"- Peers: {ver('haproxy -v')}; {ver('nginx -v')}; load: {ver('wrk -v')}, "
  f"{ver('h2load --version')}, `bench/harness` (tokio + rustls/aws-lc-rs, single thread, 32 connections in flight; for new-handshake scenarios it skips server-certificate verification like `h2load`, X25519 only, the same client for every path).")
P("- Origin (the same for every path): nginx, 1 worker, static 1 KiB / 20 B / 1 GiB files; "
  "h2c on :8082 for the direct HTTP/2 path; TLS 1.3 ECDSA P-256 on :8443 with no session cache/tickets.")
P("- CPU per request: utime+stime of the proxy's process tree from `/proc/PID/stat` before and after each "
  "run (10 ms ticks), divided by completed requests. Memory: VmRSS sum. Every run checks status 200 and "
  "body length; runs with any error are void and left out.")
P("- Constant-rate latency: HTTP/1.1 uses `bench/harness h1rate` (open loop, latency from the scheduled "
  "send time, i.e. coordinated-omission corrected, 32 connections). HTTP/2 uses `h2load --rps` "
  "(10 connections × up to 10 streams, paced per connection; latency from the actual send, so queueing "
  "is *not* corrected). The rate is 25 % / 50 % of the weakest proxy's median saturation throughput, "
  "so every path runs at the same rate and below its knee.\n")

P("## Results\n")
h1 = sat_table("h1_sat", "L7 HTTP/1.1 route at saturation (wrk -t1 -c32, 1 KiB body)", "requests/s")
h2 = sat_table("h2_sat", "L7 HTTP/2 → HTTP/1.1 at saturation (h2load -c10 -m100, 1 KiB body)", "requests/s")
h1l = lat_table("h1_lat", "HTTP/1.1 added latency")
h2l = lat_table("h2_lat", "HTTP/2 added latency")

ka = sat_table("sni_keepalive", "L4 SNI passthrough, kept-alive TLS 1.3 (harness, 32 connections, 1 KiB)",
               "requests/s")
bulk = simple_table("sni_bulk", "L4 SNI passthrough, bulk: 1 GiB over one TLS connection", [
    ("GiB/s", lambda r: r["gib_per_sec"], 3, True),
    ("proxy CPU-s per GiB", lambda r: r["proxy_cpu_s"] / (r["bytes"] / 2**30), 3, False),
    ("origin CPU-s per GiB", lambda r: r["origin_cpu_s"] / (r["bytes"] / 2**30), 3),
])
hs_sni = simple_table("sni_handshake", "L4 SNI passthrough, new TLS connection per request (32 concurrent)", [
    ("connections/s", lambda r: r["per_sec"], 0, True),
    ("proxy CPU µs per connection", cpu_per_req_us, 1, False),
    ("origin CPU µs per connection", lambda r: r["origin_cpu_s"] / r["requests"] * 1e6, 1),
])
hs = simple_table("term_handshake", "TLS termination: new TLS 1.3 handshake per request (32 concurrent)", [
    ("handshakes/s", lambda r: r["per_sec"], 0, True),
    ("proxy CPU µs per handshake", cpu_per_req_us, 1, False),
    ("origin CPU µs per request", lambda r: r["origin_cpu_s"] / r["requests"] * 1e6, 1),
])
mt = simple_table("mtls_hop", "ISTIO_MUTUAL hop: client → A (plain) → new mutual-TLS connection per request "
                  "(SPIFFE P-256 certificates) → B (requires a client certificate) → origin; wrk -c32 keep-alive to A", [
    ("handshakes/s", lambda r: r["handshakes_per_s"], 0, True),
    ("proxy CPU µs per handshake (A+B)", lambda r: r["cpu_us_per_handshake"], 1, False),
    ("A CPU µs", lambda r: r["proxy_a_cpu_s"] / r["requests"] * 1e6, 1),
    ("B CPU µs", lambda r: r["proxy_b_cpu_s"] / r["requests"] * 1e6, 1),
])
tk = sat_table("term_keepalive", "TLS termination, kept-alive (harness, 32 connections, 1 KiB)", "requests/s")
idle_h = simple_table("idle_http", f"Idle HTTP/1.1 connections ({META['idle_conns']} kept-alive after one request each)", [
    ("proxy RSS KiB per conn", lambda r: r["kib_per_conn"], 3, False),
    ("MiB per 1000", lambda r: r["kib_per_conn"] * 1000 / 1024, 2),
    ("kernel TCP mem KiB per conn (all sockets)", lambda r: r["kernel_sock_kib_per_conn"], 2),
])
idle_p = simple_table("idle_passthrough", f"Idle SNI passthrough connections ({META['idle_conns']} TLS, one request each)", [
    ("proxy RSS KiB per conn", lambda r: r["kib_per_conn"], 3, False),
    ("MiB per 1000", lambda r: r["kib_per_conn"] * 1000 / 1024, 2),
    ("kernel TCP mem KiB per conn (all sockets)", lambda r: r["kernel_sock_kib_per_conn"], 2),
])
if idle_h or idle_p:
    P("For `direct` the RSS column is the origin's own growth. Kernel TCP memory is the change of "
      "`/proc/net/sockstat` `mem` pages over all sockets (client, proxy and origin sides); idle sockets hold "
      "no queued data, so it stays near 0 — the kernel's fixed per-socket structures are not in it.\n")

# ---- control plane
comp = {}
for n in (1000, 10000):
    f = os.path.join(RES, f"compile-{n}.txt")
    if not os.path.exists(f):
        continue
    text = open(f).read()
    up = text.splitlines()[0] if text else ""
    for kind in ("prepare", "first_gateway", "first_sidecar", "cold_gateway", "cold_sidecar", "gateway", "sidecar"):
        # criterion ids: compile/<kind>/<n> (this session's bench) or compile_<n>_services/<kind> (older runs)
        m = (re.search(rf"compile/{kind}/{n}\s+time:\s+\[([\d.]+) (\w+) ([\d.]+) (\w+) ([\d.]+) (\w+)\]", text)
             or re.search(rf"compile_{n}_services/{kind}\s+time:\s+\[([\d.]+) (\w+) ([\d.]+) (\w+) ([\d.]+) (\w+)\]", text))
        if m:
            def ms(v, u):
                return float(v) * {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1000.0}[u]
            comp[(n, kind)] = (ms(m.group(3), m.group(4)), ms(m.group(1), m.group(2)), ms(m.group(5), m.group(6)))
    m = re.search(r"services: load ([^,]+), snapshot build (\S+)", text)
    comp[(n, "load")] = (m.group(1), m.group(2)) if m else None
    comp[(n, "uptime")] = up
if comp:
    P("### Control plane: compile time per proxy (criterion, `crates/isthmus-compile/benches/compile.rs`)\n")
    P("N services, each with a VirtualService (2 routes) and a DestinationRule (2 subsets, pool + outlier "
      "settings); one gateway binding all of them and one sidecar seeing all. Criterion estimate (95 % "
      "interval), 10 samples, pinned to CPU 1. The isthmus data plane keeps its config in memory, so "
      "compile time is the full push-generation cost per proxy.\n")
    P("Columns: `prepare` is done once per snapshot (istiod's PushContext setup: every service's clusters "
      "and each namespace's and Gateway's route tables); *first* is the first proxy of its kind compiled from a "
      "prepared snapshot; *cold* the first one from an unprepared snapshot; *warm* any later proxy (the "
      "per-proxy cost when config changes are pushed to many proxies).\n")
    P("| N | prepare (once) ms | first gateway / sidecar ms | cold gateway / sidecar ms | warm gateway / sidecar ms | "
      "YAML load / snapshot build | load average at start |")
    P("|---|---|---|---|---|---|---|")

    def cm(n, k):
        v = comp.get((n, k))
        return f"{fmt(v[0], 1)} ({fmt(v[1], 1)}–{fmt(v[2], 1)})" if v else "—"
    for n in (1000, 10000):
        if (n, "gateway") in comp or (n, "sidecar") in comp:
            lo = comp.get((n, "load"))
            P(f"| {n:,} | {cm(n, 'prepare')} | {cm(n, 'first_gateway')} / {cm(n, 'first_sidecar')} | "
              f"{cm(n, 'cold_gateway')} / {cm(n, 'cold_sidecar')} | {cm(n, 'gateway')} / {cm(n, 'sidecar')} | "
              f"{(lo[0] + ' / ' + lo[1]) if lo else '—'} | {comp[(n, 'uptime')].split('load average:')[-1].strip()} |")
    P("\nReference floors from perf-anchors C1 (same kind of VM): `haproxy -c` 0.19–0.20 s and `nginx -t` "
      "2.2–2.6 s for 10k services; istiod ~112 ms per push for ~1000 gateway routes (istio/istio#25136).\n")

cli = [r for r in RUNS if r["scenario"] == "compile_cli" and not r.get("void")]
if cli:
    P("### Control plane end to end: `isthmus proxy-config all PROXY -f mesh-N.yaml -o json`\n")
    P("One CLI process per run, pinned to the server CPU: reads and validates the YAML, builds the registry "
      "snapshot, compiles for one proxy and renders JSON (the same mesh as the criterion bench). Median of "
      f"{META['repeats']} runs (min–max). Load average (1 min): {loads('compile_cli')}.\n")
    P("| N services | proxy | wall s | CPU s | peak RSS MiB | JSON output MiB |")
    P("|---|---|---|---|---|---|")
    for n in sorted({r["n"] for r in cli}):
        for px in sorted({r["proxy"] for r in cli if r["n"] == n}):
            rs = [r for r in cli if r["n"] == n and r["proxy"] == px]
            P(f"| {n:,} | {px} | {cell([r['wall'] for r in rs], 2)} | {cell([r['cpu_s'] for r in rs], 2)} | "
              f"{cell([r['max_rss_mib'] for r in rs], 0)} | {fmt(median([r['output_bytes'] / 2**20 for r in rs]), 1)} |")
    P("")
    note_voids("compile_cli")

# ---- targets
P("## Targets from issue 10\n")
P("| Target | isthmus | reference | Met? |")
P("|---|---|---|---|")


def verdict(ok):
    return "—(not measured)" if ok is None else ("**met**" if ok else "**not met**")


for name, res in (("HTTP/1.1", h1), ("HTTP/2", h2)):
    if res:
        cpu, b, bp = res
        ours = cpu.get("isthmus")
        r = ratio(ours, b)
        P(f"| L7 {name}: CPU per request ≤ 0.7× best peer | {fmt(ours)} µs ({rfmt(r)}) | {bp} {fmt(b)} µs; "
          f"0.7× = {fmt(b * 0.7 if b else None)} µs | {verdict(None if r is None else r <= 0.7)} |")
for name, res in (("HTTP/1.1", h1l), ("HTTP/2", h2l)):
    for frac, (ours, b, bp) in sorted(res.items()):
        P(f"| L7 {name}: added p99 at {frac}% ≤ best peer | {fmt(ours, 3)} ms | {bp} {fmt(b, 3)} ms | "
          f"{verdict(None if ours is None or b is None else ours <= b)} |")
if bulk:
    cg = bulk.get("proxy CPU-s per GiB", {})
    ours, hs_ = cg.get("isthmus"), cg.get("haproxy-splice")
    P(f"| L4: CPU per GiB ≤ HAProxy with splice | {fmt(ours, 3)} s | haproxy-splice {fmt(hs_, 3)} s "
      f"(plain haproxy {fmt(cg.get('haproxy'), 3)}, nginx {fmt(cg.get('nginx'), 3)}) | "
      f"{verdict(None if ours is None or hs_ is None else ours <= hs_)} |")
if idle_p:
    ours = idle_p.get("proxy RSS KiB per conn", {}).get("isthmus")
    P(f"| L4: idle passthrough connection ≤ 1.1 KiB | {fmt(ours, 2)} KiB | HAProxy "
      f"{fmt(idle_p['proxy RSS KiB per conn'].get('haproxy'), 2)}, nginx "
      f"{fmt(idle_p['proxy RSS KiB per conn'].get('nginx'), 2)} KiB | "
      f"{verdict(None if ours is None else ours <= 1.1)} |")
if hs:
    h = hs.get("handshakes/s", {})
    ours, ng = h.get("isthmus"), h.get("nginx")
    P(f"| TLS: handshakes/s ≥ 1.5× nginx | {fmt(ours, 0)}/s ({rfmt(ratio(ours, ng))} nginx) | nginx {fmt(ng, 0)}/s, "
      f"HAProxy {fmt(h.get('haproxy'), 0)}/s | {verdict(None if ours is None or not ng else ours >= 1.5 * ng)} |")
g10 = [comp.get((10000, k)) for k in ("first_gateway", "first_sidecar", "gateway", "sidecar")]
if any(g10):
    worst = max(x[0] for x in g10 if x)
    prep = comp.get((10000, "prepare"))
    P(f"| Compile: 10k services < 100 ms per proxy | {fmt(worst, 1)} ms (slowest of first/warm gateway/sidecar; "
      f"plus {fmt(prep[0] if prep else None, 0)} ms once per snapshot) | 100 ms | {verdict(worst < 100)} |")
if mt:
    h = mt.get("handshakes/s", {})
    ours = h.get("isthmus")
    best = max((v for k, v in h.items() if k in PEERS and v), default=None)
    P(f"| TLS: ISTIO_MUTUAL hop handshakes/s (no numeric target; ahead of peers) | {fmt(ours, 0)}/s | "
      f"best peer {fmt(best, 0)}/s ({rfmt(ratio(ours, best))}) | {verdict(None if ours is None or best is None else ours > best)} |")
else:
    P("| TLS: ISTIO_MUTUAL hop handshakes | not measured in this run | — | —(not measured) |")
P("| Control plane: `isthmus up` time | not measured (needs root netns on a quiet machine) | — | —(not measured) |")
P("")

# ---- analysis written by a person, kept next to the scripts
an = os.path.join(HERE, "analysis.md")
if os.path.exists(an):
    P(open(an).read())

# ---- profiles
profs = sorted(f for f in os.listdir(RES) if f.startswith("profile-") and f.endswith(".txt"))
if profs:
    P("## Profiles of isthmus (perf record -g, top symbols, self time)\n")
    for f in profs:
        text = open(os.path.join(RES, f)).read().splitlines()
        P(f"**{f[8:-4]}** — `bench/results/{f}`\n")
        P("```")
        P("\n".join(text[:22]))
        P("```\n")

# ---- plots
try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"haproxy": "#1f77b4", "haproxy-splice": "#17becf", "nginx": "#2ca02c", "isthmus": "#d62728"}

    def bars(name, groups, ylabel, title):
        if not groups:
            return
        fig, ax = plt.subplots(figsize=(10, 4.5))
        whos = [w for w in ORDER if w != "direct" and any(w in g for _, g in groups)]
        width = 0.8 / max(len(whos), 1)
        for i, w in enumerate(whos):
            xs = [j + i * width for j in range(len(groups))]
            ys = [g.get(w) or 0 for _, g in groups]
            ax.bar(xs, ys, width, label=w, color=colors.get(w))
        ax.set_xticks([j + width * (len(whos) - 1) / 2 for j in range(len(groups))])
        ax.set_xticklabels([t.split("(")[0].strip()[:38] for t, _ in groups], fontsize=8)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(DOCS, f"bench-{name}.png"), dpi=90)
        plt.close(fig)

    bars("throughput", plots.get("throughput", []), "throughput ÷ direct", "Throughput relative to direct (higher is better)")
    bars("cpu", plots.get("cpu", []), "proxy CPU µs per request", "Proxy CPU per request (lower is better)")
    lat = plots.get("latency", [])
    if lat:
        fig, axes = plt.subplots(1, len(lat), figsize=(3.2 * len(lat), 4), sharey=False)
        if len(lat) == 1:
            axes = [axes]
        for ax, (t, g) in zip(axes, lat):
            ws = [w for w in ORDER if w in g]
            for i, w in enumerate(ws):
                vals = [g[w].get(k) or 0 for k in ("p50_ms", "p99_ms", "p999_ms")]
                ax.bar([j + i * 0.25 for j in range(3)], vals, 0.25, label=w, color=colors.get(w))
            ax.set_xticks([j + 0.25 for j in range(3)])
            ax.set_xticklabels(["p50", "p99", "p99.9"])
            ax.set_title(t, fontsize=8)
        axes[0].set_ylabel("added latency vs direct, ms")
        axes[-1].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(DOCS, "bench-latency.png"), dpi=90)
        plt.close(fig)
    tls_groups = []
    if bulk:
        tls_groups.append(("proxy CPU-s per GiB (SNI bulk)", bulk.get("proxy CPU-s per GiB", {})))
    if hs:
        tls_groups.append(("proxy CPU ms per new TLS handshake (termination)",
                           {k: (v / 1000 if v is not None else None)
                            for k, v in hs.get("proxy CPU µs per handshake", {}).items()}))
    if hs_sni:
        tls_groups.append(("proxy CPU ms per new connection (SNI passthrough)",
                           {k: (v / 1000 if v is not None else None)
                            for k, v in hs_sni.get("proxy CPU µs per connection", {}).items()}))
    bars("l4-tls", tls_groups, "CPU (see group label)", "L4 and TLS: proxy CPU per unit (lower is better)")
    P("## Plots\n")
    for n in ("throughput", "cpu", "latency", "l4-tls"):
        if os.path.exists(os.path.join(DOCS, f"bench-{n}.png")):
            P(f"![{n}](bench-{n}.png)\n")
except ImportError:
    P("(matplotlib not installed: no plots)\n")

os.makedirs(DOCS, exist_ok=True)
with open(os.path.join(DOCS, "benchmarks.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
