#!/usr/bin/env python3
"""Instructions per ISTIO_MUTUAL hop of isthmus proxies A and B, counted by callgrind.

The companion of bench/instr.py for the `mtls_hop` scenario of bench/bench.py: the same
configs (bench/conf/mtls-isthmus-{a,b}.json, origin.conf) and certificates (bench.py's
setup_mtls_certs), with proxy A (plain HTTP in, a new mutual-TLS connection per request) and
proxy B (mutual-TLS terminating) each under `valgrind --tool=callgrind --instr-atstart=no`.
After a warm-up, instrumentation is switched on in both, h2load drives a fixed number of
requests to A over 4 kept-alive connections, and each proxy's instructions are divided by the
completed requests (= new A->B handshakes, checked against B's downstream_cx_total).

Why: wall-clock CPU figures move by 2x on the shared build machine; instruction counts do not.
They miss kernel work (connect/accept/close), which bench.py's CPU figures include.

Usage: ISTHMUS_BIN=... [BENCH_WORK=/tmp/isthmus-instr-mtls] [BENCH_OUT=...] \
       bench/harness/instr_mtls.py [label]
Run it inside a private network namespace (`ip netns exec NS`) when other benchmarks may hold
the same loopback ports. Prints one JSON line and appends it to $BENCH_OUT/instr.jsonl.
"""

import json
import os
import re
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.dirname(HERE)
sys.path.insert(0, BENCH)
WORK = os.environ.setdefault("BENCH_WORK", "/tmp/isthmus-instr-mtls")
os.environ.setdefault("HARNESS_BIN", "")
import bench  # noqa: E402  (certificates, config rendering)
import instr  # noqa: E402  (process helpers, h2load parsing, callgrind totals)

OUT = os.environ.get("BENCH_OUT", os.path.join(BENCH, "results"))
ISTHMUS = os.environ["ISTHMUS_BIN"]
N = int(os.environ.get("INSTR_REQUESTS", "1000"))
WARM = int(os.environ.get("INSTR_WARMUP", "200"))


def b_accepts():
    with urllib.request.urlopen("http://127.0.0.1:6902/stats?filter=downstream_cx_total", timeout=30) as r:
        text = r.read().decode()
    return int(re.search(r"listener\.127\.0\.0\.1_6447\.downstream_cx_total: (\d+)", text).group(1))


def main():
    label = sys.argv[1] if len(sys.argv) > 1 else "unlabelled"
    instr.setup()  # files, origin certificate, origin.conf
    bench.setup_mtls_certs()
    bench.render(os.path.join(BENCH, "conf"), WORK)
    origin = instr.start(["nginx", "-p", WORK, "-e", f"{WORK}/logs/nginx-err.log", "-g", "daemon off;",
                          "-c", f"{WORK}/origin.conf"], "origin")
    procs = {}
    try:
        instr.wait_port(8080)
        for side, admin, port in (("b", 6902, 6447), ("a", 6901, 6446)):
            out = f"{WORK}/callgrind.mtls-{side}.out"
            for f in os.listdir(WORK):
                if f.startswith(f"callgrind.mtls-{side}.out"):
                    os.remove(os.path.join(WORK, f))
            procs[side] = instr.start(
                ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
                 ISTHMUS, "proxy", "--config", f"{WORK}/mtls-isthmus-{side}.json",
                 "--admin-address", f"127.0.0.1:{admin}", "--concurrency", "1"], f"isthmus-{side}")
            instr.wait_port(port, 180)
        url = "http://127.0.0.1:6446/small.txt"
        instr.h2load(["--h1", "-n", str(WARM), "-c", "4", url])
        before = b_accepts()
        for p in procs.values():
            subprocess.run(["callgrind_control", "-i", "on", str(p.pid)], check=True, capture_output=True)
        t0 = time.time()
        done = instr.h2load(["--h1", "-n", str(N), "-c", "4", url])
        wall = time.time() - t0
        for p in procs.values():
            subprocess.run(["callgrind_control", "-i", "off", str(p.pid)], check=True, capture_output=True)
            subprocess.run(["callgrind_control", "-d", str(p.pid)], check=True, capture_output=True)
        accepted = b_accepts() - before
        time.sleep(1)
        ir = {}
        for side in procs:
            dumps = sorted(f for f in os.listdir(WORK) if f.startswith(f"callgrind.mtls-{side}.out."))
            ir[side] = sum(instr.total_ir(os.path.join(WORK, f)) for f in dumps)
    finally:
        for p in procs.values():
            instr.stop(p)
        instr.stop(origin)
    if accepted != done:
        raise SystemExit(f"B accepted {accepted} connections for {done} requests: not one handshake per request")
    rec = {"scenario": "mtls_hop", "label": label, "requests": done, "handshakes": accepted,
           "ir_a_per_request": round(ir["a"] / max(done, 1)), "ir_b_per_request": round(ir["b"] / max(done, 1)),
           "ir_per_request": round((ir["a"] + ir["b"]) / max(done, 1)), "wall_s": round(wall, 1),
           "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    print(json.dumps(rec), flush=True)
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "instr.jsonl"), "a") as f:
        f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
