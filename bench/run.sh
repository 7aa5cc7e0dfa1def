#!/usr/bin/env bash
# One command for issue 10: installs the peers (Debian packages), builds isthmus and the load
# harness in release, runs every scenario against direct / isthmus / HAProxy / nginx with the
# same CPU pinning (load generators on CPU 0, origin + proxy on CPU 1), 3 repeats each, runs the
# control-plane compile benchmark, and writes docs/benchmarks.md plus docs/bench-*.png.
# Optional afterwards: `ISTHMUS_BIN=... HARNESS_BIN=... bench/alloc_probe.py` (glibc vs jemalloc).
#
# Environment knobs: BENCH_SECS (10), BENCH_REPEATS (3), BENCH_IDLE_CONNS (1000),
# BENCH_ONLY=h1,h2,sni,term,idle[,termka] (subset), BENCH_SKIP_COMPILE=1, BENCH_PROFILE=0, BENCH_NICE (e.g. -5), BENCH_FROM_HEAD=1 [BENCH_REF, BENCH_SRC_DIR], CARGO_TARGET_DIR
# (default /work/target-bench), BENCH_WORK (scratch dir, default /tmp/isthmus-bench).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target-bench}"
export BENCH_WORK="${BENCH_WORK:-/tmp/isthmus-bench}"
export BENCH_OUT="${BENCH_OUT:-$HERE/results}"
mkdir -p "$BENCH_WORK" "$BENCH_OUT"

# --- peers and tools from Debian (policy-rc.d keeps apt from starting the services) ---
need=()
for pkg in haproxy nginx libnginx-mod-stream wrk nghttp2-client; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
    apt-cache policy "$pkg" | grep -q 'Candidate: (none)' && { echo "no Debian candidate for $pkg" >&2; exit 1; }
    need+=("$pkg")
  fi
done
if ((${#need[@]})); then
  echo "installing: ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"
fi
python3 -c 'import matplotlib' 2>/dev/null || python3 -m pip install -q matplotlib

# --- builds ---
# BENCH_FROM_HEAD=1 builds isthmus from `git archive ${BENCH_REF:-HEAD}` into ${BENCH_SRC_DIR}
# instead of the working tree (useful when the tree holds someone's half-finished edits); an
# existing export of the same commit is reused so cargo does not rebuild it. The report records
# which commit was measured.
SRC="$ROOT"
REF="$(git -C "$ROOT" rev-parse --short "${BENCH_REF:-HEAD}")"
if [[ "${BENCH_FROM_HEAD:-0}" == 1 ]]; then
  SRC="${BENCH_SRC_DIR:-$BENCH_WORK/src}"
  if [[ "$(cat "$SRC/.bench-commit" 2>/dev/null)" != "$REF" ]]; then
    rm -rf "$SRC" && mkdir -p "$SRC"
    git -C "$ROOT" archive "$REF" | tar -x -C "$SRC"
    echo "$REF" > "$SRC/.bench-commit"
  fi
fi
export BENCH_COMMIT="$REF$([[ "$SRC" == "$ROOT" ]] && ! git -C "$ROOT" diff --quiet -- crates Cargo.toml Cargo.lock && echo ' + uncommitted changes in the tree' || true)"
(cd "$SRC" && cargo build --release -p isthmus)
(cd "$HERE/harness" && CARGO_TARGET_DIR="${CARGO_TARGET_DIR}-harness" cargo build --release)
export ISTHMUS_BIN="$CARGO_TARGET_DIR/release/isthmus"
export HARNESS_BIN="${CARGO_TARGET_DIR}-harness/release/isthmus-bench-harness"

# --- data plane (bench.py starts and stops every server it runs; trap covers interrupts) ---
python3 "$HERE/bench.py" &
BENCH_PID=$!
trap 'kill -TERM $BENCH_PID 2>/dev/null || true; wait $BENCH_PID 2>/dev/null || true' EXIT INT TERM
wait $BENCH_PID
# Hot spots of isthmus under each load (perf from linux-perf, software cpu-clock event since the VM has
# no hardware counters; skipped if perf cannot record here).
if [[ "${BENCH_PROFILE:-1}" == 1 ]] && perf record -e cpu-clock -o /tmp/.bench-perf-probe -- true >/dev/null 2>&1; then
  python3 "$HERE/bench.py" profile h1,h2,sni,bulk,term &
  BENCH_PID=$!
  wait $BENCH_PID
fi
trap - EXIT INT TERM

# --- control plane: compile time per proxy for 1k and 10k services (VS + DR each) ---
# (built after the data-plane runs so the build does not compete with them)
if [[ "${BENCH_SKIP_COMPILE:-0}" != 1 ]]; then
  (cd "$SRC" && cargo bench -p isthmus-compile --bench compile --no-run)
  for n in 1000 10000; do
    uptime > "$BENCH_OUT/compile-$n.txt"
    (cd "$SRC" && ISTHMUS_BENCH_SERVICES=$n taskset -c 1 cargo bench -p isthmus-compile --bench compile -- --noplot) \
      >> "$BENCH_OUT/compile-$n.txt" 2>&1
  done
fi

# perf data files are large; the text reports are in $BENCH_OUT
rm -f "$BENCH_WORK"/perf-*.data*

# --- report ---
python3 "$HERE/report.py" "$BENCH_OUT" "$ROOT/docs"
echo "wrote $ROOT/docs/benchmarks.md"
