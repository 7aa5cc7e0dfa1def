#!/usr/bin/env python3
"""Instructions per request of the isthmus proxy, counted by valgrind (callgrind).

Why: the build machine is shared by several compilers, so wall-clock and CPU-time figures move
by 2x between runs. Instruction counts of the proxy's own process do not depend on what else
runs, so they are the before/after measure for hot-path fixes (bench/analysis.md). They miss
kernel work (syscalls, copies), so L4 bulk relays and splice(2) are judged by CPU time in
bench/run.sh instead.

Method: start the origin (nginx, bench/conf/origin.conf) and `isthmus proxy` under
`valgrind --tool=callgrind --instr-atstart=no`; warm each path up, then switch instrumentation on
(`callgrind_control -i on`), drive a fixed number of requests with h2load or the bench harness,
dump, and divide the instructions (Ir) by the completed requests. One proxy process per
scenario, so the counts of one scenario never include another's.

Usage: ISTHMUS_BIN=... HARNESS_BIN=... bench/instr.py [h1,h2,sni,term] [label]
Prints one JSON line per scenario and appends it to $BENCH_OUT/instr.jsonl; the callgrind
profile of each run stays in $BENCH_WORK/callgrind.<scenario>.out for callgrind_annotate.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
WORK = os.environ.get("BENCH_WORK", "/tmp/isthmus-instr")
OUT = os.environ.get("BENCH_OUT", os.path.join(HERE, "results"))
ISTHMUS = os.environ["ISTHMUS_BIN"]
HARNESS = os.environ.get("HARNESS_BIN", "")
# Requests per measured window (after a warm-up of WARM requests). Fixed, so runs compare.
N = int(os.environ.get("INSTR_REQUESTS", "2000"))
WARM = int(os.environ.get("INSTR_WARMUP", "200"))
EXTRA_ARGS = os.environ.get("INSTR_PROXY_ARGS", "").split()


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


def sh(cmd):
    subprocess.run(cmd, shell=True, check=True)


def wait_port(port, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"port {port} did not open within {timeout}s")


def setup():
    for d in ("www", "logs", "tmp"):
        os.makedirs(f"{WORK}/{d}", exist_ok=True)
    with open(f"{WORK}/www/small.txt", "w") as f:
        f.write("hello from origin!!\n")
    with open(f"{WORK}/www/1k.txt", "w") as f:
        f.write(("x" * 63 + "\n") * 16)
    if not os.path.exists(f"{WORK}/ec.crt"):
        sh(
            f"cd {WORK} && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
            f"-keyout ca.key -out ca.crt -days 30 -subj /CN=bench-ca 2>/dev/null && "
            f"openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ec.key -out ec.csr "
            f"-subj /CN=backend.test 2>/dev/null && "
            f"printf 'subjectAltName=DNS:backend.test\\nbasicConstraints=CA:FALSE\\n' > leaf.ext && "
            f"openssl x509 -req -in ec.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 "
            f"-extfile leaf.ext -out ec.crt 2>/dev/null"
        )
    for name in ("origin.conf", "isthmus.json"):
        with open(os.path.join(HERE, "conf", name)) as f:
            text = f.read().replace("$BENCH", WORK)
        with open(os.path.join(WORK, name), "w") as f:
            f.write(text)


def start(cmd, log_name):
    out = open(f"{WORK}/logs/{log_name}.out", "w")
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(p):
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def h2load(args):
    r = subprocess.run(["h2load"] + args, capture_output=True, text=True, timeout=900)
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", r.stdout)
    st = re.search(r"status codes: (\d+) 2xx", r.stdout)
    if not m or int(m.group(5)) or int(m.group(6)) or not st:
        raise RuntimeError(f"h2load failed: {r.stdout[-600:]} {r.stderr[-300:]}")
    return int(st.group(1))


def harness(mode, port, path, conns, secs):
    ca = f"{WORK}/ca.crt"
    r = subprocess.run([HARNESS, "tls", mode, f"127.0.0.1:{port}", "backend.test", ca, path, str(conns), str(secs)],
                       capture_output=True, text=True, timeout=900)
    d = json.loads(r.stdout.strip().splitlines()[-1])
    if d.get("errors"):
        raise RuntimeError(f"harness errors: {d}")
    return int(d["ok"])


SCENARIOS = {
    # name: (load(n) -> completed requests)
    "h1": lambda n: h2load(["--h1", "-n", str(n), "-c", "4", "http://127.0.0.1:6080/1k.txt"]),
    "h2": lambda n: h2load(["-n", str(n), "-c", "4", "-m", "10", "http://127.0.0.1:6080/1k.txt"]),
    # TLS keep-alive requests through SNI passthrough (the proxy relays bytes only).
    "sni": lambda n: harness("keepalive", 6443, "/1k.txt", 4, max(2, n // 200)),
    # One new TLS connection (full handshake at the proxy) per request.
    "term": lambda n: harness("new", 6445, "/small.txt", 4, max(2, n // 40)),
}


def total_ir(path):
    with open(path) as f:
        for line in f:
            if line.startswith("totals:"):
                return int(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


def run(scenario, label):
    outfile = f"{WORK}/callgrind.{scenario}.out"
    for f in os.listdir(WORK):
        if f.startswith(f"callgrind.{scenario}.out"):
            os.remove(os.path.join(WORK, f))
    p = start(["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={outfile}",
               ISTHMUS, "proxy", "--config", f"{WORK}/isthmus.json", "--admin-address", "127.0.0.1:6900"] + EXTRA_ARGS,
              "isthmus-callgrind")
    try:
        wait_port(6080, 120)
        wait_port(6443, 60)
        load = SCENARIOS[scenario]
        load(WARM)
        subprocess.run(["callgrind_control", "-i", "on", str(p.pid)], check=True, capture_output=True)
        t0 = time.time()
        done = load(N)
        wall = time.time() - t0
        subprocess.run(["callgrind_control", "-i", "off", str(p.pid)], check=True, capture_output=True)
        subprocess.run(["callgrind_control", "-d", str(p.pid)], check=True, capture_output=True)
        time.sleep(1)
        # Only the explicit dumps (.1, .2...): the base file is written at exit.
        dumps = sorted(f for f in os.listdir(WORK) if f.startswith(f"callgrind.{scenario}.out."))
        ir = sum(total_ir(os.path.join(WORK, f)) for f in dumps)
    finally:
        stop(p)
    rec = {"scenario": scenario, "label": label, "requests": done, "ir_total": ir,
           "ir_per_request": round(ir / max(done, 1)), "wall_s": round(wall, 1),
           "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    print(json.dumps(rec), flush=True)
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "instr.jsonl"), "a") as f:
        f.write(json.dumps(rec) + "\n")
    return rec


def main():
    which = sys.argv[1].split(",") if len(sys.argv) > 1 else list(SCENARIOS)
    label = sys.argv[2] if len(sys.argv) > 2 else "unlabelled"
    setup()
    origin = start(["nginx", "-p", WORK, "-e", f"{WORK}/logs/nginx-err.log", "-g", "daemon off;",
                    "-c", f"{WORK}/origin.conf"], "origin")
    try:
        wait_port(8080)
        for s in which:
            run(s, label)
    finally:
        stop(origin)


if __name__ == "__main__":
    main()
