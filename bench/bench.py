#!/usr/bin/env python3
"""Runs the isthmus data-plane benchmarks side by side with HAProxy, nginx and a direct path.

Called by bench/run.sh (which installs the peers and builds the binaries). Follows the protocol
in shared/reference/perf-anchors.md part D: load generators pinned to CPU 0, origin and the proxy
under test pinned to CPU 1, one worker per peer, every scenario run for every path in the same
run, interleaved over REPEATS repeats. CPU is read from /proc/PID/stat (utime+stime of the whole
process tree), memory from VmRSS. Every run checks errors; a run with errors is marked void and
left out of the medians.

Writes raw results to $BENCH_OUT/results.json (one record per run).
"""

import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
WORK = os.environ.get("BENCH_WORK", "/tmp/isthmus-bench")
OUT = os.environ.get("BENCH_OUT", os.path.join(HERE, "results"))
ISTHMUS = os.environ["ISTHMUS_BIN"]
HARNESS = os.environ["HARNESS_BIN"]
SECS = int(os.environ.get("BENCH_SECS", "10"))
REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
IDLE_N = int(os.environ.get("BENCH_IDLE_CONNS", "1000"))
ONLY = set(filter(None, os.environ.get("BENCH_ONLY", "").split(",")))
LOADGEN_CPU = os.environ.get("BENCH_LOADGEN_CPU", "0")
SERVER_CPU = os.environ.get("BENCH_SERVER_CPU", "1")
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Optional priority for servers and load generators (e.g. -5) on a shared machine; 0 = as is.
NICE = ["nice", "-n", os.environ["BENCH_NICE"]] if os.environ.get("BENCH_NICE", "0") != "0" else []

# Ports: origin 808x/8443, HAProxy 7xxx, HAProxy+splice 7444, nginx 9xxx, isthmus 6xxx.
PORTS = {
    "h1": {"direct": 8080, "haproxy": 7080, "nginx": 9080, "isthmus": 6080},
    "h2": {"direct": 8082, "haproxy": 7082, "nginx": 9082, "isthmus": 6080},
    "sni": {"direct": 8443, "haproxy": 7443, "haproxy-splice": 7444, "nginx": 9443, "isthmus": 6443},
    "term": {"direct": 8443, "haproxy": 7445, "nginx": 9445, "isthmus": 6445},
}
PROXIES = ["haproxy", "nginx", "isthmus"]
# Handshake-rate scenarios: the harness skips server verification (like h2load/oha --insecure)
# and offers X25519 only, so its cost per handshake stays well below any server's and every path
# is driven by the same client. BENCH_HS_CLIENT=<CA file> verifies instead (the old protocol).
HS_CLIENT = os.environ.get("BENCH_HS_CLIENT", "insecure")
# ISTIO_MUTUAL hop: client -> proxy A (plain HTTP/1.1, kept alive) -> new mutual-TLS connection
# per request -> proxy B (requires a client certificate) -> origin :8080. A listens on the first
# port, B on the second. "direct" is the application doing the mutual-TLS handshake itself with an
# nginx origin that requires a client certificate (mtls-origin.conf), no proxies.
MTLS_PORTS = {"direct": (8446, 8446), "haproxy": (7446, 7447), "nginx": (9446, 9447), "isthmus": (6446, 6447)}

procs = {}  # name -> Popen
results = []


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


# ---------------------------------------------------------------- process accounting

def tree(pid):
    """pid plus all descendants (nginx master + worker)."""
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    st = f.read()
                ppid = int(st[st.rindex(")") + 2:].split()[1])
                kids.setdefault(ppid, []).append(int(d))
            except (OSError, ValueError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def cpu_secs(name):
    """utime+stime (all threads) of the named server's process tree, in seconds."""
    total = 0
    for p in tree(procs[name].pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                st = f.read()
            fields = st[st.rindex(")") + 2:].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, ValueError):
            pass
    return total / CLK_TCK


def rss_kib(name):
    total = 0
    for p in tree(procs[name].pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def sockstat_mem_pages():
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                parts = line.split()
                return int(parts[parts.index("mem") + 1])
    return 0


# ---------------------------------------------------------------- setup

def sh(cmd, **kw):
    return subprocess.run(cmd, shell=True, check=True, **kw)


def setup_files():
    os.makedirs(f"{WORK}/www", exist_ok=True)
    os.makedirs(f"{WORK}/logs", exist_ok=True)
    os.makedirs(f"{WORK}/tmp", exist_ok=True)
    with open(f"{WORK}/www/small.txt", "w") as f:
        f.write("hello from origin!!\n")  # 20 bytes
    with open(f"{WORK}/www/1k.txt", "w") as f:
        f.write(("x" * 63 + "\n") * 16)
    big = f"{WORK}/www/big.bin"
    if not os.path.exists(big) or os.path.getsize(big) != 1 << 30:
        sh(f"head -c {1 << 30} /dev/urandom > {big}")
    sh(f"cat {big} > /dev/null")  # warm the page cache
    if not os.path.exists(f"{WORK}/ca.crt"):
        # A CA and an ECDSA P-256 leaf for backend.test (webpki refuses a CA cert as end entity).
        sh(
            f"cd {WORK} && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
            f"-keyout ca.key -out ca.crt -days 30 -subj /CN=bench-ca 2>/dev/null && "
            f"openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ec.key -out ec.csr "
            f"-subj /CN=backend.test 2>/dev/null && "
            f"printf 'subjectAltName=DNS:backend.test\\nbasicConstraints=CA:FALSE\\n' > leaf.ext && "
            f"openssl x509 -req -in ec.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 "
            f"-extfile leaf.ext -out ec.crt 2>/dev/null && cat ec.crt ec.key > ec.pem"
        )
    setup_mtls_certs()
    render(os.path.join(HERE, "conf"), WORK)


def setup_mtls_certs():
    """Mesh root and two workload SVIDs (ECDSA P-256) for the ISTIO_MUTUAL hop scenario.

    Like Istio's: the root is a CA with keyCertSign; each SVID carries its SPIFFE ID as a URI SAN,
    digitalSignature and serverAuth+clientAuth. The server SVID also has the DNS name
    server.bench.svc.cluster.local so the peers, which check host names and not SPIFFE IDs
    (nginx proxy_ssl_verify, HAProxy verifyhost), verify B's identity too; isthmus checks the
    SPIFFE URI SAN (DestinationRule ISTIO_MUTUAL subjectAltNames) and the trust domain."""
    d = f"{WORK}/mtls"
    if os.path.exists(f"{d}/server.pem"):
        return
    os.makedirs(d, exist_ok=True)
    ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
    sh(f"cd {d} && "
       f"openssl req -x509 {ec} -keyout root.key -out root.crt -days 30 -subj /O=cluster.local "
       f"-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign,digitalSignature "
       f"2>/dev/null")
    for name, san in (("client", "URI:spiffe://cluster.local/ns/bench/sa/client"),
                      ("server", "URI:spiffe://cluster.local/ns/bench/sa/server,DNS:server.bench.svc.cluster.local")):
        sh(f"cd {d} && openssl req {ec} -keyout {name}.key -out {name}.csr -subj /O=bench 2>/dev/null && "
           f"printf 'subjectAltName=critical,{san}\\nbasicConstraints=critical,CA:FALSE\\n"
           f"keyUsage=critical,digitalSignature,keyEncipherment\\nextendedKeyUsage=serverAuth,clientAuth\\n' > {name}.ext && "
           f"openssl x509 -req -in {name}.csr -CA root.crt -CAkey root.key -CAcreateserial -days 30 "
           f"-extfile {name}.ext -out {name}.crt 2>/dev/null && cat {name}.crt {name}.key > {name}.pem")


def render(src, dst):
    for name in os.listdir(src):
        with open(os.path.join(src, name)) as f:
            text = f.read().replace("$BENCH", WORK)
        with open(os.path.join(dst, name), "w") as f:
            f.write(text)


def wait_port(port, timeout=15):
    end = time.time() + timeout
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"port {port} did not open")


STARTS = {}


def restart(name):
    """Fresh process for memory measurements (pools grown by earlier load hide per-conn cost)."""
    p = procs[name]
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    cmd, port = STARTS[name]
    time.sleep(0.3)
    start(name, cmd, port)
    time.sleep(1)


def start(name, cmd, port):
    STARTS[name] = (cmd, port)
    log("start", name, cmd)
    out = open(f"{WORK}/logs/{name}.out", "w")
    procs[name] = subprocess.Popen(
        NICE + ["taskset", "-c", SERVER_CPU] + cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )
    wait_port(port)


def start_all():
    nginx_base = ["nginx", "-p", WORK, "-e", f"{WORK}/logs/nginx-err.log", "-g", "daemon off;"]
    start("origin", nginx_base + ["-c", f"{WORK}/origin.conf"], 8080)
    wait_port(8443)
    wait_port(8082)
    start("haproxy", ["haproxy", "-db", "-f", f"{WORK}/haproxy.cfg"], 7080)
    start("haproxy-splice", ["haproxy", "-db", "-f", f"{WORK}/haproxy-splice.cfg"], 7444)
    start("nginx", nginx_base + ["-c", f"{WORK}/nginx-proxy.conf"], 9080)
    start(
        "isthmus",
        # One worker like the peers (nbthread 1, worker_processes 1); BENCH_CONCURRENCY overrides.
        [ISTHMUS, "proxy", "--config", f"{WORK}/isthmus.json", "--admin-address", "127.0.0.1:6900",
         "--concurrency", os.environ.get("BENCH_CONCURRENCY", "1")],
        6080,
    )
    wait_port(6443)
    wait_port(6445)


def stop_all():
    for name, p in list(procs.items()):
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    for name, p in list(procs.items()):
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def check_paths():
    """Correctness first: every path returns 200 and the right body; unknown SNI is refused."""
    ctx = ssl.create_default_context(cafile=f"{WORK}/ca.crt")
    for kind, ports in PORTS.items():
        for who, port in ports.items():
            if kind == "h2":
                r = subprocess.run(
                    ["h2load", "-n", "20", "-c", "2", f"http://127.0.0.1:{port}/1k.txt"],
                    capture_output=True, text=True, timeout=30,
                )
                if "20 succeeded" not in r.stdout:
                    raise RuntimeError(f"h2 check failed for {who}:{port}: {r.stdout}{r.stderr}")
                continue
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            if kind in ("sni", "term"):
                s = ctx.wrap_socket(s, server_hostname="backend.test")
            s.sendall(b"GET /1k.txt HTTP/1.1\r\nHost: backend.test\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            s.close()
            head, _, body = data.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200") or len(body) != 1024:
                raise RuntimeError(f"check failed for {kind} {who}:{port}: {head[:200]!r} body={len(body)}")
    # Unknown SNI must not reach the origin through any passthrough listener.
    bad = ssl.create_default_context()
    bad.check_hostname = False
    bad.verify_mode = ssl.CERT_NONE
    for who in ("haproxy", "nginx", "isthmus"):
        port = PORTS["sni"][who]
        try:
            s = bad.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname="wrong.test")
            s.close()
            raise RuntimeError(f"{who} passthrough accepted unknown SNI wrong.test")
        except (ssl.SSLError, ConnectionError, OSError) as e:
            if isinstance(e, RuntimeError):
                raise
    log("all paths checked: 200 + 1024-byte body; unknown SNI refused")


# ---------------------------------------------------------------- load runners

def loadgen(cmd, timeout):
    r = subprocess.run(NICE + ["taskset", "-c", LOADGEN_CPU] + cmd, capture_output=True, text=True, timeout=timeout)
    return r.stdout, r.stderr, r.returncode


def measured(scenario, who, repeat, cmd, parse, server, extra=None, timeout=None):
    """Runs cmd with CPU accounting of `server` (the proxy) and of the origin."""
    la = loadavg()
    c0, o0 = cpu_secs(server), cpu_secs("origin")
    t0 = time.time()
    out, err, rc = loadgen(cmd, timeout or SECS + 60)
    wall = time.time() - t0
    c1, o1 = cpu_secs(server), cpu_secs("origin")
    rec = {"scenario": scenario, "who": who, "repeat": repeat, "loadavg": la, "wall": round(wall, 3),
           "proxy_cpu_s": round(c1 - c0, 3), "origin_cpu_s": round(o1 - o0, 3), "rc": rc}
    if extra:
        rec.update(extra)
    try:
        rec.update(parse(out))
    except Exception as e:  # noqa: BLE001 - a parse failure voids the run, it does not stop the suite
        rec["void"] = f"parse: {e}: {out[-400:]} {err[-400:]}"
    if rc != 0:
        rec["void"] = f"exit {rc}: {err[-400:]}"
    if rec.get("errors"):
        rec["void"] = f"{rec['errors']} errors"
    results.append(rec)
    log(json.dumps(rec))
    save()
    return rec


def parse_wrk(out):
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    reqs = re.search(r"(\d+) requests in ([\d.]+)s", out)
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    e = (sum(int(x) for x in errs.groups()) if errs else 0) + (int(non2xx.group(1)) if non2xx else 0)
    return {"rps": float(m.group(1)), "requests": int(reqs.group(1)), "errors": e}


def parse_h2load(out):
    m = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", out)
    r = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    st = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    errors = int(r.group(5)) + int(r.group(6)) + (int(st.group(3)) + int(st.group(4)) if st else 0)
    return {"rps": float(m.group(3)), "requests": int(r.group(4)), "errors": errors}


def parse_json(out):
    d = json.loads(out.strip().splitlines()[-1])
    if "ok" in d:
        d["requests"] = d["ok"]
    return d


def h2load_latency(logfile):
    def parse(out):
        base = parse_h2load(out)
        lat = []
        bad = 0
        with open(logfile) as f:
            for line in f:
                parts = line.split("\t")
                if len(parts) >= 3:
                    if parts[1] != "200":
                        bad += 1
                    lat.append(int(parts[2]))
        lat.sort()

        def pct(p):
            return lat[min(len(lat) - 1, round(p / 100 * (len(lat) - 1)))] / 1000.0

        base.update({"p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99), "p999_ms": pct(99.9),
                     "max_ms": lat[-1] / 1000.0, "errors": base["errors"] + bad, "ok": len(lat)})
        return base
    return parse


def server_for(who):
    return "origin" if who == "direct" else who


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def peak(scenario):
    """Weakest proxy's median saturation rate: every path can sustain a fraction of it."""
    meds = []
    for who in PROXIES:
        xs = [r["rps"] for r in results if r["scenario"] == scenario and r["who"] == who and not r.get("void")]
        if xs:
            meds.append(median(xs))
    return min(meds) if meds else 0


def want(s):
    return not ONLY or s in ONLY


def run_all():
    targets = ["direct"] + PROXIES
    warm = max(2, SECS // 5)
    if want("h1"):
        for rep in range(REPEATS):
            for who in targets:
                port = PORTS["h1"][who]
                measured("h1_sat", who, rep, ["wrk", "-t1", "-c32", f"-d{SECS}s", "--latency",
                                              f"http://127.0.0.1:{port}/1k.txt"], parse_wrk, server_for(who))
    if want("h2"):
        for rep in range(REPEATS):
            for who in targets:
                port = PORTS["h2"][who]
                measured("h2_sat", who, rep, ["h2load", "-c10", "-m100", "-t1", "-D", str(SECS),
                                              f"http://127.0.0.1:{port}/1k.txt"],
                         parse_h2load, server_for(who))
    if want("h1"):
        pk = peak("h1_sat")
        for frac in (0.25, 0.5):
            rate = max(100, int(pk * frac))
            for rep in range(REPEATS):
                for who in targets:
                    port = PORTS["h1"][who]
                    measured(f"h1_lat_{int(frac * 100)}", who, rep,
                             [HARNESS, "h1rate", f"127.0.0.1:{port}", "/1k.txt", "32", str(SECS), str(rate)],
                             parse_json, server_for(who), {"rate": rate})
    if want("h2"):
        pk = peak("h2_sat")
        for frac in (0.25, 0.5):
            rate = max(100, int(pk * frac))
            for rep in range(REPEATS):
                for who in targets:
                    port = PORTS["h2"][who]
                    lf = f"{WORK}/h2lat.log"
                    if os.path.exists(lf):
                        os.remove(lf)
                    # 10 connections x 10 streams, each client paced at rate/10 requests/s.
                    measured(f"h2_lat_{int(frac * 100)}", who, rep,
                             ["h2load", "-c10", "-m10", "-t1", f"--rps={rate / 10:.1f}", "-D", str(SECS),
                              f"--log-file={lf}", f"http://127.0.0.1:{port}/1k.txt"],
                             h2load_latency(lf), server_for(who), {"rate": rate})
    ca = f"{WORK}/ca.crt"
    if want("sni"):
        for rep in range(REPEATS):
            for who in targets:
                port = PORTS["sni"][who]
                measured("sni_keepalive", who, rep,
                         [HARNESS, "tls", "keepalive", f"127.0.0.1:{port}", "backend.test", ca, "/1k.txt", "32",
                          str(SECS)], parse_json, server_for(who))
        for rep in range(REPEATS):
            for who in ["direct", "haproxy", "haproxy-splice", "nginx", "isthmus"]:
                port = PORTS["sni"][who]
                measured("sni_bulk", who, rep,
                         [HARNESS, "tls", "bulk", f"127.0.0.1:{port}", "backend.test", ca, "/big.bin", "1", "1"],
                         parse_json, server_for(who))
        for rep in range(REPEATS):
            for who in targets:
                port = PORTS["sni"][who]
                # HS_CLIENT (no verification, X25519 only) for every path: see HS_CLIENT.
                measured("sni_handshake", who, rep,
                         [HARNESS, "tls", "new", f"127.0.0.1:{port}", "backend.test", HS_CLIENT, "/small.txt", "32",
                          str(SECS)], parse_json, server_for(who), {"client": HS_CLIENT})
    if want("term"):
        for rep in range(REPEATS):
            for who in targets:
                port = PORTS["term"][who]
                measured("term_handshake", who, rep,
                         [HARNESS, "tls", "new", f"127.0.0.1:{port}", "backend.test", HS_CLIENT, "/small.txt", "32",
                          str(SECS)], parse_json, server_for(who), {"client": HS_CLIENT})
    if want("mtls"):
        mtls_hop()
    if "termka" in ONLY:  # kept-alive TLS termination: only on request (time budget)
        for rep in range(REPEATS):
            for who in targets:
                port = PORTS["term"][who]
                measured("term_keepalive", who, rep,
                         [HARNESS, "tls", "keepalive", f"127.0.0.1:{port}", "backend.test", ca, "/1k.txt", "32",
                          str(SECS)], parse_json, server_for(who))
    if want("compile"):
        compile_cli()
    if want("idle"):
        for rep in range(REPEATS):
            for kind, scen in (("h1", "idle_http"), ("sni", "idle_passthrough")):
                for who in targets:
                    idle(scen, kind, who, rep)


def mtls_start():
    """Starts proxies A and B of every peer and the direct path's mTLS origin (all on the server
    CPU, like every other server); returns {who: [process names]} for CPU accounting."""
    nginx_base = ["nginx", "-p", WORK, "-e", f"{WORK}/logs/nginx-err.log", "-g", "daemon off;"]
    conc = os.environ.get("BENCH_CONCURRENCY", "1")
    specs = {
        "direct": [("mtls-origin", nginx_base + ["-c", f"{WORK}/mtls-origin.conf"], 8446)],
        "haproxy": [("mtls-haproxy-b", ["haproxy", "-db", "-f", f"{WORK}/mtls-haproxy-b.cfg"], 7447),
                    ("mtls-haproxy-a", ["haproxy", "-db", "-f", f"{WORK}/mtls-haproxy-a.cfg"], 7446)],
        "nginx": [("mtls-nginx-b", nginx_base + ["-c", f"{WORK}/mtls-nginx-b.conf"], 9447),
                  ("mtls-nginx-a", nginx_base + ["-c", f"{WORK}/mtls-nginx-a.conf"], 9446)],
        "isthmus": [("mtls-isthmus-b", [ISTHMUS, "proxy", "--config", f"{WORK}/mtls-isthmus-b.json",
                                        "--admin-address", "127.0.0.1:6902", "--concurrency", conc], 6447),
                    ("mtls-isthmus-a", [ISTHMUS, "proxy", "--config", f"{WORK}/mtls-isthmus-a.json",
                                        "--admin-address", "127.0.0.1:6901", "--concurrency", conc], 6446)],
    }
    for who, parts in specs.items():
        for name, cmd, port in parts:
            start(name, cmd, port)
    return {who: [n for n, _, _ in parts] for who, parts in specs.items()}


B_QUERIES = {"nginx": 0, "haproxy": 0}


def b_accepts(who):
    """Connections accepted so far by proxy B of `who` (its own counter: nginx stub_status,
    HAProxy CumConns, isthmus downstream_cx_total), not counting the queries of this counter
    (nginx and HAProxy count the status connection itself)."""
    if who in B_QUERIES:
        B_QUERIES[who] += 1
        return b_accepts_raw(who) - B_QUERIES[who]
    return b_accepts_raw(who)


def b_accepts_raw(who):
    if who == "nginx":
        with urllib.request.urlopen("http://127.0.0.1:9448/", timeout=5) as r:
            return int(r.read().decode().splitlines()[2].split()[0])
    if who == "haproxy":
        with socket.socket(socket.AF_UNIX) as u:
            u.settimeout(5)
            u.connect(f"{WORK}/mtls-haproxy-b.sock")
            u.sendall(b"show info\n")
            data = b""
            while chunk := u.recv(65536):
                data += chunk
        return int(re.search(rb"^CumConns: (\d+)", data, re.M).group(1))
    if who == "isthmus":
        with urllib.request.urlopen("http://127.0.0.1:6902/stats?filter=downstream_cx_total", timeout=5) as r:
            text = r.read().decode()
        return int(re.search(r"listener\.127\.0\.0\.1_6447\.downstream_cx_total: (\d+)", text).group(1))
    raise ValueError(who)


def mtls_check():
    """Every hop answers 200 with the full body, and each proxy A opens a NEW connection to B
    per request: 5 requests over one kept-alive client connection must make B accept 5
    connections (B's own counter). B refuses a client without a certificate."""
    ctx_c = ssl.create_default_context(cafile=f"{WORK}/mtls/root.crt")
    ctx_c.check_hostname = False
    ctx_c.load_cert_chain(f"{WORK}/mtls/client.crt", f"{WORK}/mtls/client.key")
    for who, (pa, pb) in MTLS_PORTS.items():
        before = b_accepts(who) if who != "direct" else 0
        s = socket.create_connection(("127.0.0.1", pa), timeout=5)
        if who == "direct":
            s = ctx_c.wrap_socket(s, server_hostname="server.bench.svc.cluster.local")
        n = 1 if who == "direct" else 5
        for i in range(n):
            last = i == n - 1
            s.sendall(b"GET /1k.txt HTTP/1.1\r\nHost: server.bench.svc.cluster.local\r\n"
                      + (b"Connection: close\r\n" if last else b"") + b"\r\n")
            data = b""
            while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < 1024:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200") or len(body) != 1024:
                raise RuntimeError(f"mtls check failed for {who}:{pa} request {i}: {head[:200]!r} body={len(body)}")
        s.close()
        if who != "direct":
            got = b_accepts(who) - before
            if got != n:
                raise RuntimeError(f"{who}: {n} requests made B :{pb} accept {got} connections, not {n} "
                                   f"(A must open a new mutual-TLS connection per request)")
        # No client certificate: B must refuse.
        bad = ssl.create_default_context(cafile=f"{WORK}/mtls/root.crt")
        bad.check_hostname = False
        try:
            t = bad.wrap_socket(socket.create_connection(("127.0.0.1", pb), timeout=5),
                                server_hostname="server.bench.svc.cluster.local")
            t.sendall(b"GET /1k.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            got = t.recv(100)
            t.close()
            if got.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"{who}: B :{pb} served a client without a certificate")
        except (ssl.SSLError, ConnectionError, OSError):
            pass
    log("mtls hop checked: 200 + 1024-byte body on every path, one A->B connection per request, "
        "B refuses clients without a certificate")


def mtls_hop():
    """ISTIO_MUTUAL hop: new mutual-TLS handshakes/s and CPU per handshake (A + B)."""
    names = mtls_start()
    try:
        mtls_check()
        for rep in range(REPEATS):
            for who in ["direct"] + PROXIES:
                pa, _ = MTLS_PORTS[who]
                parts = names[who]
                if who == "direct":
                    env = dict(os.environ, HARNESS_CLIENT_CERT=f"{WORK}/mtls/client.crt",
                               HARNESS_CLIENT_KEY=f"{WORK}/mtls/client.key")
                    cmd = [HARNESS, "tls", "new", f"127.0.0.1:{pa}", "server.bench.svc.cluster.local", HS_CLIENT,
                           "/small.txt", "32", str(SECS)]
                    parse = parse_json
                else:
                    env = None
                    cmd = ["wrk", "-t1", "-c32", f"-d{SECS}s", f"http://127.0.0.1:{pa}/small.txt"]
                    parse = parse_wrk
                la = loadavg()
                c0 = {n: cpu_secs(n) for n in parts}
                o0 = cpu_secs("origin")
                t0 = time.time()
                r = subprocess.run(NICE + ["taskset", "-c", LOADGEN_CPU] + cmd, capture_output=True, text=True,
                                   timeout=SECS + 60, env=env)
                wall = time.time() - t0
                c1 = {n: cpu_secs(n) for n in parts}
                o1 = cpu_secs("origin")
                cpu = {n: round(c1[n] - c0[n], 3) for n in parts}
                rec = {"scenario": "mtls_hop", "who": who, "repeat": rep, "loadavg": la, "wall": round(wall, 3),
                       "proxy_cpu_s": round(sum(cpu.values()), 3), "origin_cpu_s": round(o1 - o0, 3),
                       "rc": r.returncode, "client": "wrk -c32 keep-alive" if who != "direct" else HS_CLIENT}
                if who != "direct":
                    rec["proxy_a_cpu_s"] = cpu[parts[1]]
                    rec["proxy_b_cpu_s"] = cpu[parts[0]]
                try:
                    rec.update(parse(r.stdout))
                except Exception as e:  # noqa: BLE001 - a parse failure voids the run
                    rec["void"] = f"parse: {e}: {r.stdout[-400:]} {r.stderr[-400:]}"
                if r.returncode != 0:
                    rec["void"] = f"exit {r.returncode}: {r.stderr[-400:]}"
                if rec.get("errors"):
                    rec["void"] = f"{rec['errors']} errors"
                if "rps" not in rec and "per_sec" in rec:
                    rec["rps"] = rec["per_sec"]
                if rec.get("requests") and not rec.get("void"):
                    # One new A->B mutual-TLS handshake per request (checked in mtls_check).
                    rec["handshakes_per_s"] = rec.get("rps")
                    rec["cpu_us_per_handshake"] = round(rec["proxy_cpu_s"] / rec["requests"] * 1e6, 1)
                results.append(rec)
                log(json.dumps(rec))
                save()
    finally:
        for who, parts in names.items():
            for n in parts:
                p = procs.pop(n, None)
                if p is not None and p.poll() is None:
                    os.killpg(p.pid, signal.SIGTERM)
                    try:
                        p.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        os.killpg(p.pid, signal.SIGKILL)


def mesh_yaml(n):
    """Same mesh as crates/isthmus-compile/benches/compile.rs: N services, each with a
    VirtualService (2 routes, bound to mesh and the gateway) and a DestinationRule (2 subsets)."""
    y = ["apiVersion: v1\nkind: Namespace\nmetadata: {name: bench, labels: {istio-injection: enabled}}\n---\n",
         "apiVersion: v1\nkind: Namespace\nmetadata: {name: istio-system}\n---\n",
         "apiVersion: v1\nkind: Pod\nmetadata: {name: gw, namespace: istio-system, labels: {istio: ingressgateway}}\n"
         "spec: {containers: [{name: p, image: x}]}\n---\n",
         "apiVersion: v1\nkind: Pod\nmetadata: {name: client, namespace: bench, labels: {app: client}}\n"
         "spec: {containers: [{name: c, image: x}]}\n---\n",
         "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: istio-system}\nspec:\n"
         "  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n"
         "    hosts: [\"*\"]\n---\n"]
    for i in range(n):
        y.append(
            f"apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: bench}}\nspec:\n"
            f"  selector: {{app: svc-{i}}}\n  ports: [{{name: http, port: 8080}}]\n---\n"
            f"apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: vs-{i}, namespace: bench}}\n"
            f"spec:\n  hosts: [svc-{i}]\n  gateways: [mesh, istio-system/gw]\n  http:\n"
            f"  - match: [{{uri: {{prefix: /v2}}}}]\n    route: [{{destination: {{host: svc-{i}, subset: v2}}}}]\n"
            f"  - route: [{{destination: {{host: svc-{i}, subset: v1}}}}]\n    timeout: 5s\n---\n"
            f"apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: dr-{i}, namespace: bench}}\n"
            f"spec:\n  host: svc-{i}\n  trafficPolicy:\n"
            f"    connectionPool: {{tcp: {{maxConnections: 100, connectTimeout: 3s}}, http: {{http1MaxPendingRequests: 10}}}}\n"
            f"    outlierDetection: {{consecutive5xxErrors: 5, interval: 10s}}\n  subsets:\n"
            f"  - {{name: v1, labels: {{version: v1}}}}\n  - {{name: v2, labels: {{version: v2}}}}\n---\n")
    return "".join(y)


def compile_cli():
    """End-to-end `isthmus proxy-config all PROXY -o json` (YAML load + snapshot + compile + render)."""
    for n in (1000, 10000):
        path = f"{WORK}/mesh-{n}.yaml"
        with open(path, "w") as f:
            f.write(mesh_yaml(n))
        for proxy in ("gw.istio-system", "client.bench"):
            for rep in range(REPEATS):
                out = f"{WORK}/proxy-config-{n}.json"
                la = loadavg()
                t0 = time.time()
                with open(out, "w") as fo, open(f"{WORK}/logs/proxy-config.err", "w") as fe:
                    p = subprocess.Popen(NICE + ["taskset", "-c", SERVER_CPU, ISTHMUS, "proxy-config", "all", proxy,
                                                 "-f", path, "-o", "json"], stdout=fo, stderr=fe)
                    _, status, ru = os.wait4(p.pid, 0)
                wall = time.time() - t0
                rec = {"scenario": "compile_cli", "who": "isthmus", "n": n, "proxy": proxy, "repeat": rep,
                       "loadavg": la, "wall": round(wall, 3), "cpu_s": round(ru.ru_utime + ru.ru_stime, 3),
                       "max_rss_mib": round(ru.ru_maxrss / 1024, 1), "output_bytes": os.path.getsize(out),
                       "rc": os.waitstatus_to_exitcode(status)}
                if rec["rc"] != 0:
                    rec["void"] = f"exit {rec['rc']}"
                results.append(rec)
                log(json.dumps(rec))
                save()


def idle(scen, kind, who, rep):
    """Opens IDLE_N connections, one request each, holds them; RSS delta of the server."""
    server = server_for(who)
    port = PORTS[kind][who]
    restart(server)
    if server != "origin":
        restart("origin")
    ctx = ssl.create_default_context(cafile=f"{WORK}/ca.crt") if kind == "sni" else None
    time.sleep(0.5)
    before = rss_kib(server)
    origin_before = rss_kib("origin")
    sock_before = sockstat_mem_pages()
    socks, errors = [], 0
    t0 = time.time()
    for _ in range(IDLE_N):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            if ctx:
                s = ctx.wrap_socket(s, server_hostname="backend.test")
            s.sendall(b"GET /small.txt HTTP/1.1\r\nHost: backend.test\r\n\r\n")
            got = b""
            while b"hello from origin" not in got:
                chunk = s.recv(4096)
                if not chunk:
                    raise ConnectionError("closed")
                got += chunk
            socks.append(s)
        except (OSError, ssl.SSLError):
            errors += 1
    time.sleep(2)
    during = rss_kib(server)
    origin_during = rss_kib("origin")
    sock_during = sockstat_mem_pages()
    alive = len(socks)
    for s in socks:
        s.close()
    rec = {"scenario": scen, "who": who, "repeat": rep, "loadavg": loadavg(), "conns": alive, "errors": errors,
           "rss_before_kib": before, "rss_during_kib": during,
           "kib_per_conn": round((during - before) / max(alive, 1), 3),
           "origin_kib_per_conn": round((origin_during - origin_before) / max(alive, 1), 3),
           "kernel_sock_kib_per_conn": round((sock_during - sock_before) * 4 / max(alive, 1), 3),
           "open_secs": round(time.time() - t0, 2)}
    if errors:
        rec["void"] = f"{errors} errors"
    results.append(rec)
    log(json.dumps(rec))
    save()
    time.sleep(1)


def save():
    os.makedirs(OUT, exist_ok=True)
    meta = {"commit": os.environ.get("BENCH_COMMIT", "?"), "nice": os.environ.get("BENCH_NICE", "0"), "secs": SECS, "repeats": REPEATS, "idle_conns": IDLE_N, "loadgen_cpu": LOADGEN_CPU,
            "server_cpu": SERVER_CPU, "started": STARTED, "uptime_at_start": UPTIME_START,
            "isthmus_concurrency": os.environ.get("BENCH_CONCURRENCY", "1")}
    with open(os.path.join(OUT, "results.json"), "w") as f:
        json.dump({"meta": meta, "runs": results}, f, indent=1)


STARTED = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
UPTIME_START = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


PROFILE_LOADS = {
    # name: (load command builder, isthmus port kind)
    "h1": lambda: ["wrk", "-t1", "-c32", f"-d{SECS}s", f"http://127.0.0.1:{PORTS['h1']['isthmus']}/1k.txt"],
    "h2": lambda: ["h2load", "-c10", "-m100", "-t1", "-D", str(SECS), f"http://127.0.0.1:{PORTS['h2']['isthmus']}/1k.txt"],
    "sni": lambda: [HARNESS, "tls", "keepalive", f"127.0.0.1:{PORTS['sni']['isthmus']}", "backend.test",
                    f"{WORK}/ca.crt", "/1k.txt", "32", str(SECS)],
    "bulk": lambda: [HARNESS, "tls", "bulk", f"127.0.0.1:{PORTS['sni']['isthmus']}", "backend.test",
                     f"{WORK}/ca.crt", "/big.bin", "1", "1"],
    "term": lambda: [HARNESS, "tls", "new", f"127.0.0.1:{PORTS['term']['isthmus']}", "backend.test",
                     HS_CLIENT, "/small.txt", "32", str(SECS)],
}


def profile(kinds):
    """perf record of the isthmus process under one load; writes results/profile-KIND.txt."""
    for kind in kinds:
        pid = procs["isthmus"].pid
        data = f"{WORK}/perf-{kind}.data"
        # BENCH_PERF_DWARF=1: DWARF call graphs (the release build has no frame pointers), so the
        # report can attribute malloc and formatting to their callers; heavier, use short runs.
        cg = ["--call-graph", "dwarf,16384", "-F", "499"] if os.environ.get("BENCH_PERF_DWARF") == "1" else ["-F", "999", "-g"]
        rec = subprocess.Popen(["perf", "record", "-e", "cpu-clock"] + cg + ["-p", str(pid), "-o", data],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        out, err, rc = loadgen(PROFILE_LOADS[kind](), SECS + 60)
        rec.send_signal(signal.SIGINT)
        rec.wait(timeout=30)
        mode = "--children" if os.environ.get("BENCH_PERF_DWARF") == "1" else "--no-children"
        rep = subprocess.run(["perf", "report", "-i", data, mode, "--sort", "dso,symbol",
                              "--stdio", "-g", "none", "--percent-limit", "0.7"],
                             capture_output=True, text=True)
        dso = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", "dso", "--stdio",
                              "-g", "none", "--percent-limit", "1"], capture_output=True, text=True)
        os.makedirs(OUT, exist_ok=True)
        with open(os.path.join(OUT, f"profile-{kind}.txt"), "w") as f:
            f.write("# share by binary: " + "; ".join(
                " ".join(l.split()) for l in dso.stdout.splitlines() if l.strip() and not l.startswith("#")) + "\n")
            f.write(f"# perf record -F 999 -g on isthmus during: {' '.join(PROFILE_LOADS[kind]())}\n")
            f.write(f"# loadavg {loadavg()}\n# load output tail: {out[-300:]!r}\n")
            f.write("\n".join(l for l in rep.stdout.splitlines() if l.strip() and not l.startswith("#")))
            f.write("\n")
        log("profile written for", kind)


def main():
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    setup_files()
    try:
        start_all()
        check_paths()
        if len(sys.argv) > 2 and sys.argv[1] == "profile":
            profile(sys.argv[2].split(","))
            return
        run_all()
    finally:
        stop_all()
        if not (len(sys.argv) > 1 and sys.argv[1] == "profile"):
            save()
    log("done; results in", OUT)


if __name__ == "__main__":
    main()
