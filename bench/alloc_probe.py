#!/usr/bin/env python3
"""Memory and per-connection probes of the isthmus proxy (bench/analysis-s3-l4.md).

Modes (first argument; default `l7`):
  l7        How much of isthmus's L7 CPU is the allocator? Runs the HTTP/1.1 and HTTP/2
            saturation loads against the same isthmus binary with glibc malloc and with jemalloc
            (LD_PRELOAD of Debian's libjemalloc2), alternating, REPEATS times; same pinning and
            accounting as bench.py. Writes $BENCH_OUT/alloc-probe.json.
  idle      RSS per idle TLS passthrough connection: a fresh `isthmus proxy --concurrency 1`,
            IDLE_N (default 1000) connections through the SNI passthrough listener, one request
            each, held; (RSS during - RSS before) / connections, REPEATS times. Like bench.py's
            idle scenario, without the peers; a load-independent figure (RSS, not time).
  sni_new   Callgrind instructions of the proxy per new TLS passthrough connection (connect,
            ClientHello peek, upstream connect, relay of one request, close), with bench/instr.py's
            method; appends to $BENCH_OUT/instr.jsonl.
  sni       Same for keep-alive 1 KiB requests through passthrough (bench/instr.py's `sni`).
  cpu       A/B CPU time of the proxy process (utime+stime from /proc) per TLS passthrough
            request: ISTHMUS_BIN (label a) and ISTHMUS_BIN_B (label b) alternated REPEATS times,
            each for SECS seconds of the harness `keepalive` (1 KiB, CPU_CONNS conns) and `new`
            (one connection per request) loops, isthmus `--concurrency 1`, both pinned to
            BENCH_SERVER_CPU like bench.py; then the `bulk` download of a 256 MiB file (CPU-s
            per GiB). Alternation spreads the shared machine's load over both; the records
            carry the load average.
Usage: ISTHMUS_BIN=... HARNESS_BIN=... alloc_probe.py [l7|idle|sni_new|sni|cpu] [label]
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"


def l7():
    bench.setup_files()
    nginx_base = ["nginx", "-p", bench.WORK, "-e", f"{bench.WORK}/logs/nginx-err.log", "-g", "daemon off;"]
    cmd = [bench.ISTHMUS, "proxy", "--config", f"{bench.WORK}/isthmus.json", "--admin-address", "127.0.0.1:6900"]
    out = []
    try:
        bench.start("origin", nginx_base + ["-c", f"{bench.WORK}/origin.conf"], 8080)
        for rep in range(bench.REPEATS):
            for alloc in ("glibc", "jemalloc"):
                env_cmd = (["env", f"LD_PRELOAD={JEMALLOC}"] if alloc == "jemalloc" else []) + cmd
                bench.start("isthmus", env_cmd, 6080)
                for scen, load in (("h1_sat", ["wrk", "-t1", "-c32", f"-d{bench.SECS}s", "http://127.0.0.1:6080/1k.txt"]),
                                   ("h2_sat", ["h2load", "-c10", "-m100", "-t1", "-D", str(bench.SECS),
                                               "http://127.0.0.1:6080/1k.txt"])):
                    parse = bench.parse_wrk if scen == "h1_sat" else bench.parse_h2load
                    r = bench.measured(scen, f"isthmus+{alloc}", rep, load, parse, "isthmus")
                    r["cpu_us_per_req"] = round(r["proxy_cpu_s"] / r["requests"] * 1e6, 2)
                    out.append(r)
                p = bench.procs.pop("isthmus")
                os.killpg(p.pid, 15)
                p.wait(timeout=10)
    finally:
        bench.stop_all()
        os.makedirs(bench.OUT, exist_ok=True)
        with open(os.path.join(bench.OUT, "alloc-probe.json"), "w") as f:
            json.dump(out, f, indent=1)
    for scen in ("h1_sat", "h2_sat"):
        for alloc in ("glibc", "jemalloc"):
            xs = sorted(r["cpu_us_per_req"] for r in out if r["scenario"] == scen and r["who"] == f"isthmus+{alloc}")
            rps = sorted(r["rps"] for r in out if r["scenario"] == scen and r["who"] == f"isthmus+{alloc}")
            print(scen, alloc, "cpu us/req", xs, "rps", rps)


# PROBE_PORT_OFFSET moves every port of the probe (origin 8080/8082/8443, proxy 6080/6443/6445)
# by this much, so a probe can run while another bench's origin holds the standard ports
# (nginx binds them with reuseport, so a second origin would silently share them).
OFF = int(os.environ.get("PROBE_PORT_OFFSET", "0"))


def setup_instr():
    """bench/instr.py's setup, with the ports moved by PROBE_PORT_OFFSET."""
    import re
    import instr  # noqa: E402

    instr.setup()
    if OFF:
        for name in ("origin.conf", "isthmus.json"):
            path = os.path.join(instr.WORK, name)
            with open(path) as f:
                text = f.read()
            text = re.sub(r"127\.0\.0\.1:(\d{4})\b", lambda m: f"127.0.0.1:{int(m.group(1)) + OFF}", text)
            text = re.sub(r'"port": (\d{4})\b', lambda m: f'"port": {int(m.group(1)) + OFF}', text)
            with open(path, "w") as f:
                f.write(text)
        orig_wait = instr.wait_port
        instr.wait_port = lambda port, timeout=60: orig_wait(port + OFF, timeout)
    return instr


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def idle(label):
    """RSS per idle TLS passthrough connection (see the module doc)."""
    import socket
    import ssl
    import time

    n = int(os.environ.get("IDLE_N", "1000"))
    instr = setup_instr()
    origin = instr.start(["nginx", "-p", instr.WORK, "-e", f"{instr.WORK}/logs/nginx-err.log", "-g", "daemon off;",
                          "-c", f"{instr.WORK}/origin.conf"], "origin")
    out = []
    try:
        instr.wait_port(8080)
        for rep in range(bench.REPEATS):
            p = instr.start([instr.ISTHMUS, "proxy", "--config", f"{instr.WORK}/isthmus.json",
                             "--admin-address", f"127.0.0.1:{6900 + OFF}", "--concurrency", "1"], "isthmus-idle")
            try:
                instr.wait_port(6443, 60)
                time.sleep(0.5)
                ctx = ssl.create_default_context(cafile=f"{instr.WORK}/ca.crt")
                before = rss_kib(p.pid)
                socks = []
                for _ in range(n):
                    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", 6443 + OFF), timeout=10),
                                        server_hostname="backend.test")
                    s.sendall(b"GET /small.txt HTTP/1.1\r\nHost: backend.test\r\n\r\n")
                    got = b""
                    while b"hello from origin" not in got:
                        chunk = s.recv(4096)
                        if not chunk:
                            raise ConnectionError("closed")
                        got += chunk
                    socks.append(s)
                time.sleep(2)
                during = rss_kib(p.pid)
                for s in socks:
                    s.close()
                rec = {"scenario": "idle_passthrough", "label": label, "repeat": rep, "conns": n,
                       "rss_before_kib": before, "rss_during_kib": during,
                       "kib_per_conn": round((during - before) / n, 3),
                       "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
                print(json.dumps(rec), flush=True)
                out.append(rec)
            finally:
                instr.stop(p)
    finally:
        instr.stop(origin)
    os.makedirs(bench.OUT, exist_ok=True)
    with open(os.path.join(bench.OUT, "idle-probe.jsonl"), "a") as f:
        for r in out:
            f.write(json.dumps(r) + "\n")


def proc_cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_ab():
    """A/B CPU per passthrough request (see the module doc)."""
    import subprocess
    import time

    bins = {"a": os.environ["ISTHMUS_BIN"], "b": os.environ["ISTHMUS_BIN_B"]}
    conns = os.environ.get("CPU_CONNS", "4")
    instr = setup_instr()
    big = f"{instr.WORK}/www/big.bin"
    if not os.path.exists(big) or os.path.getsize(big) != 256 << 20:
        subprocess.run(f"head -c {256 << 20} /dev/urandom > {big}", shell=True, check=True)
    origin = instr.start(["nginx", "-p", instr.WORK, "-e", f"{instr.WORK}/logs/nginx-err.log", "-g", "daemon off;",
                          "-c", f"{instr.WORK}/origin.conf"], "origin")
    out = []
    try:
        instr.wait_port(8080)
        for rep in range(bench.REPEATS):
            for who, binary in bins.items():
                p = instr.start(["taskset", "-c", bench.SERVER_CPU, binary, "proxy", "--config",
                                 f"{instr.WORK}/isthmus.json", "--admin-address", f"127.0.0.1:{6900 + OFF}",
                                 "--concurrency", "1"], f"isthmus-cpu-{who}")
                try:
                    instr.wait_port(6443, 60)
                    for mode, path in (("keepalive", "/1k.txt"), ("new", "/small.txt"), ("bulk", "/big.bin")):
                        c0 = proc_cpu_s(p.pid)
                        la = os.getloadavg()[0]
                        n_conns, secs = ("1", "1") if mode == "bulk" else (conns, str(bench.SECS))
                        r = subprocess.run(["taskset", "-c", bench.LOADGEN_CPU, bench.HARNESS, "tls", mode,
                                            f"127.0.0.1:{6443 + OFF}", "backend.test", f"{instr.WORK}/ca.crt", path,
                                            n_conns, secs], capture_output=True, text=True, timeout=600)
                        c1 = proc_cpu_s(p.pid)
                        d = json.loads(r.stdout.strip().splitlines()[-1])
                        rec = {"scenario": f"sni_{mode}", "who": who, "bin": binary, "repeat": rep,
                               "loadavg": round(la, 2), "requests": d["ok"], "errors": d.get("errors", 0),
                               "proxy_cpu_s": round(c1 - c0, 3),
                               "cpu_us_per_req": round((c1 - c0) / max(d["ok"], 1) * 1e6, 2),
                               "bytes": d.get("bytes", 0),
                               "cpu_s_per_gib": round((c1 - c0) / max(d.get("bytes", 0), 1) * (1 << 30), 3),
                               "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
                        print(json.dumps(rec), flush=True)
                        out.append(rec)
                finally:
                    instr.stop(p)
    finally:
        instr.stop(origin)
    os.makedirs(bench.OUT, exist_ok=True)
    with open(os.path.join(bench.OUT, "cpu-ab.jsonl"), "a") as f:
        for r in out:
            f.write(json.dumps(r) + "\n")
    for scen in ("sni_keepalive", "sni_new", "sni_bulk"):
        key = "cpu_s_per_gib" if scen == "sni_bulk" else "cpu_us_per_req"
        for who in bins:
            xs = sorted(r[key] for r in out if r["scenario"] == scen and r["who"] == who)
            print(scen, who, key, xs)


def instructions(which, label):
    """Callgrind instructions per request/connection through passthrough (bench/instr.py).
    The proxy's admin port stays 6900 (instr.py's command line)."""

    # One new TLS connection through SNI passthrough per request: the proxy peeks the
    # ClientHello, connects upstream and relays; the handshake itself is the origin's.
    instr = setup_instr()
    instr.SCENARIOS["sni_new"] = lambda k: instr.harness("new", 6443 + OFF, "/small.txt", 4, max(2, k // 40))
    instr.SCENARIOS["sni"] = lambda k: instr.harness("keepalive", 6443 + OFF, "/1k.txt", 4, max(2, k // 200))
    origin = instr.start(["nginx", "-p", instr.WORK, "-e", f"{instr.WORK}/logs/nginx-err.log", "-g", "daemon off;",
                          "-c", f"{instr.WORK}/origin.conf"], "origin")
    try:
        instr.wait_port(8080)
        instr.run(which, label)
    finally:
        instr.stop(origin)


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "l7"
    lab = sys.argv[2] if len(sys.argv) > 2 else "unlabelled"
    if mode == "l7":
        l7()
    elif mode == "idle":
        idle(lab)
    elif mode in ("sni_new", "sni"):
        instructions(mode, lab)
    elif mode == "cpu":
        cpu_ab()
    else:
        sys.exit(f"unknown mode {mode!r}; see the module doc")
