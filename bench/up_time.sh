#!/usr/bin/env bash
# How long `isthmus up` takes for the demo profile with four pods (two app pods plus the
# profile's ingress and egress gateways, each gateway running a proxy that must ACK its
# first push before the mesh counts as ready). Needs root (network namespaces, nftables).
#
#   bench/up_time.sh [RUNS]          # default 10 runs
#   ISTHMUS=path/to/isthmus bench/up_time.sh
#
# Uses hyperfine when installed (Debian: apt-get install hyperfine), else a plain loop.
# Every run starts from nothing: the previous mesh is taken down (untimed) before it.
# Output: hyperfine's summary (or min/median/mean/max of the loop), in seconds.
set -euo pipefail

RUNS="${1:-10}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
ISTHMUS="${ISTHMUS:-$ROOT/target/release/isthmus}"
if [ ! -x "$ISTHMUS" ]; then
  echo "no isthmus binary at $ISTHMUS; build it (cargo build --release -p isthmus) or set ISTHMUS=" >&2
  exit 1
fi
if [ "$(id -u)" != 0 ]; then
  echo "isthmus up needs root (network namespaces, nftables); run with sudo" >&2
  exit 1
fi

WORK="$(mktemp -d /tmp/isthmus-up-bench.XXXXXX)"
export ISTHMUS_STATE_DIR="$WORK/state"
NAME="upbench$$"
cleanup() {
  "$ISTHMUS" down --name "$NAME" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

cat > "$WORK/mesh.yaml" <<YAML
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: default, labels: {app: web}}
spec:
  containers:
  - name: echo
    command: ["$ISTHMUS", echo, --http-port, "8080", --name, web]
    ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: default}
spec:
  containers:
  - {name: sleep, command: [sleep, infinity]}
YAML

UP="$ISTHMUS up --name $NAME --profile demo $WORK/mesh.yaml"
DOWN="$ISTHMUS down --name $NAME"

# One untimed run checks that the mesh comes up with four pods at all.
out="$($UP)"
echo "$out" | head -1
echo "$out" | grep -q "is up: 4 pod(s)" || { echo "expected 4 pods:" >&2; echo "$out" >&2; exit 1; }
$DOWN >/dev/null

if command -v hyperfine >/dev/null 2>&1; then
  hyperfine --runs "$RUNS" --prepare "$DOWN >/dev/null 2>&1 || true" \
    --command-name "isthmus up (demo profile, 4 pods)" "$UP"
else
  times=()
  for _ in $(seq "$RUNS"); do
    $DOWN >/dev/null 2>&1 || true
    t0=$(date +%s%N)
    $UP >/dev/null
    t1=$(date +%s%N)
    times+=("$(( (t1 - t0) / 1000000 ))")
  done
  printf '%s\n' "${times[@]}" | sort -n | awk '
    { v[NR] = $1; s += $1 }
    END {
      med = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
      printf "isthmus up (demo profile, 4 pods), %d runs: min %.3fs  median %.3fs  mean %.3fs  max %.3fs\n",
        NR, v[1] / 1000, med / 1000, s / NR / 1000, v[NR] / 1000
    }'
fi
