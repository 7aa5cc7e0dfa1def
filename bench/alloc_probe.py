#!/usr/bin/env python3
"""How much of isthmus's L7 CPU is the allocator? Runs the HTTP/1.1 and HTTP/2 saturation loads
against the same isthmus binary with glibc malloc and with jemalloc (LD_PRELOAD of Debian's
libjemalloc2), alternating, REPEATS times; same pinning and accounting as bench.py.
Writes $BENCH_OUT/alloc-probe.json. Usage: ISTHMUS_BIN=... HARNESS_BIN=... alloc_probe.py
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"


def main():
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


if __name__ == "__main__":
    main()
