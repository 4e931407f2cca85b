#!/usr/bin/env bash
# Reliability cases on loopback, with figures (not a CI test: it takes minutes and measures time).
#   Benchmarks/reliability.sh [case...]     cases: restart-agent restart-server flood soak (default: all but soak)
#   SOAK_SECONDS=600 Benchmarks/reliability.sh soak
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath .build/release/slimsplit)
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT
PORT=$((20000 + RANDOM % 20000))
"$BIN" keygen --name server --out "$TMP/keys" >/dev/null
for a in car-1 car-2 car-3 rsu-1 flood-1; do "$BIN" keygen --name $a --out "$TMP/keys/agents" >/dev/null; done
cat > "$TMP/server.yaml" <<YAML
endpoint: tcp://127.0.0.1:$PORT
curve: {secret_key: keys/server.key, allowed_keys: keys/agents}
fusion: {model: $PWD/Models/slimsplit-bev.safetensors}
metrics: {port: 0}
YAML
agent_cfg() { # id recording-agent rate_multiplier
cat > "$TMP/$1.yaml" <<YAML
agent_id: $1
server: tcp://127.0.0.1:$PORT
curve: {server_key: keys/server.pub, secret_key: keys/agents/$1.key}
source: {recording: $PWD/Tests/Fixtures/sample.mcap, agent: $2, model: $PWD/Models/slimsplit-bev.safetensors, bits: 4, loop: true}
YAML
}
agent_cfg car-1 car_1; agent_cfg car-2 car_2; agent_cfg rsu-1 rsu_1
agent_cfg car-3 car_1   # a fourth agent for the soak (the sample has three): car_1's sweeps again
start_server() { "$BIN" server --config "$TMP/server.yaml" --status-interval 0 --duration "$1" > "$TMP/server.out" 2> "$TMP/server.err" & SERVER=$!; PIDS+=($SERVER); }
start_agent() { "$BIN" agent --config "$TMP/$1.yaml" --frames "$2" > "$TMP/$1.out" 2> "$TMP/$1.err" & eval "PID_${1//-/_}=$!"; PIDS+=($!); }
rss_kb() { awk '/VmRSS/ {print $2}' /proc/"$1"/status 2>/dev/null || echo 0; }
acks() { grep -E "^$1 " "$TMP/$1.out" | awk '{print $3}'; }

cases=("$@"); [ ${#cases[@]} -gt 0 ] || cases=(restart-agent restart-server flood)
for c in "${cases[@]}"; do
case $c in
restart-agent)
    start_server 12; sleep 1
    start_agent car-1 60; start_agent car-2 100; sleep 2
    kill -9 "$PID_car_1"; echo "restart-agent: killed car-1 (kill -9)"; sleep 1
    start_agent car-1 30; wait "$PID_car_1" || true; wait "$PID_car_2" || true
    echo "restart-agent: car-1 after restart: $(tail -1 "$TMP/car-1.out" | awk '{print $2" frames, "$3" acked, "$4" results"}'); car-2 meanwhile: $(tail -1 "$TMP/car-2.out" | awk '{print $2" frames, "$3" acked, "$4" results"}')"
    wait "$SERVER" || true ;;
restart-server)
    start_server 4; sleep 1
    start_agent car-1 120; sleep 2
    kill -9 "$SERVER"; sleep 0.5
    t0=$(date +%s%N); start_server 8
    # Resumed when the server logs the agent joining again.
    for i in $(seq 1 300); do grep -q "agent joined" "$TMP/server.err" && break; sleep 0.01; done
    t1=$(date +%s%N)
    echo "restart-server: agent rejoined $(( (t1 - t0) / 1000000 )) ms after the server process started"
    wait "$PID_car_1" || true; echo "restart-server: car-1 $(tail -1 "$TMP/car-1.out" | awk '{print $2" frames, "$3" acked, "$4" results"}')"
    wait "$SERVER" || true ;;
flood)
    # Baseline: two agents; then the same with a third agent sending 10x its rate (synthetic frames, 100 Hz).
    start_server 30; sleep 1
    start_agent car-1 100; start_agent rsu-1 100; wait "$PID_car_1" || true; wait "$PID_rsu_1" || true
    base=$(tail -1 "$TMP/car-1.out" | awk '{print $9}')
    cat > "$TMP/flood-1.yaml" <<YAML
agent_id: flood-1
server: tcp://127.0.0.1:$PORT
curve: {server_key: keys/server.pub, secret_key: keys/agents/flood-1.key}
synthetic: {rate_hz: 100, channels: 64, height: 32, width: 32, bits: 4, width_index: 3}
YAML
    rss0=$(rss_kb "$SERVER")
    start_agent flood-1 1000; start_agent car-1 100; start_agent rsu-1 100
    peak=0; while kill -0 "$PID_car_1" 2>/dev/null; do r=$(rss_kb "$SERVER"); [ "$r" -gt "$peak" ] && peak=$r; sleep 0.5; done
    wait "$PID_rsu_1" || true; kill "$PID_flood_1" 2>/dev/null || true
    loaded=$(tail -1 "$TMP/car-1.out" | awk '{print $9}')
    echo "flood: server RSS ${rss0} kB before, peak ${peak} kB during; car-1 RTT p99 ${base} ms alone vs ${loaded} ms beside a 10x flooder"
    kill "$SERVER" 2>/dev/null || true ;;
soak)
    S=${SOAK_SECONDS:-600}
    start_server $((S + 10)); sleep 1
    for a in car-1 car-2 car-3 rsu-1; do start_agent $a $((S * 10)); done
    first=$(rss_kb "$SERVER"); echo "soak: server RSS at start ${first} kB"
    for i in $(seq 1 $((S / 60))); do sleep 60; echo "soak: t=${i} min server RSS $(rss_kb "$SERVER") kB"; done
    wait "$PID_car_1" || true
    for a in car-1 car-2 car-3 rsu-1; do echo "soak: $a $(tail -1 "$TMP/$a.out" | awk '{print $2" frames, "$3" acked, "$4" results, RTT p99 "$9" ms"}')"; done
    kill "$SERVER" 2>/dev/null || true ;;
*) echo "unknown case $c"; exit 2 ;;
esac
done
