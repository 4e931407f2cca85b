#!/usr/bin/env bash
# Adaptive versus fixed agent on the same shaped link, in the same run.
#
# Three network namespaces: the servers', an adaptive agent's and a fixed agent's, joined by one
# veth pair per agent (addresses exist only inside the namespaces this script makes). Each agent's
# uplink goes through netem (delay, loss) and tbf (rate), and both follow the same bandwidth trace.
# Two cooperative groups run side by side, each with its own server: car_1 of the committed
# sample across the shaped link (adaptive: `source.adapt`, or fixed at full width, 8 bits) and
# rsu_1 on the server's side (unshaped, as a roadside unit on wired backhaul). Each shaped agent
# writes a per-frame report (`slimsplit agent --report`), and Benchmarks/shaped_link_report.py
# prints the table (per trace segment: width, bits, bytes/frame, goodput estimate, deadline
# misses, AP) and draws the plot. Run as root. Everything it creates is removed on exit, also on
# failure.
#
#   Benchmarks/shaped_link.sh [--bin PATH] [--model FILE] [--out DIR] [--trace "MBIT:SECONDS ..."]
#                             [--delay-ms N] [--loss PCT]
#
# Defaults: release binary, Models/slimsplit-bev.safetensors, out /tmp/slimsplit-shaped, trace
# "20:15 2:20 8:15 20:10" (Mbit/s for seconds), 10 ms one-way delay each way, 0.5 % loss on the
# uplink. Delay and loss need the netem qdisc; on kernels without it (some sandboxes) loss is made
# with iptables' statistic match and there is no added delay (the script says so).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.build/release/slimsplit MODEL=Models/slimsplit-bev.safetensors OUT=/tmp/slimsplit-shaped TRACE="20:15 2:20 8:15 20:10" DELAY=10 LOSS=0.5
while [ $# -gt 0 ]; do
    case "$1" in
        --bin) BIN=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --model) MODEL=$2; shift 2 ;;
        --trace) TRACE=$2; shift 2 ;;
        --delay-ms) DELAY=$2; shift 2 ;;
        --loss) LOSS=$2; shift 2 ;;
        -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "error: run as root (network namespaces and tc)" >&2; exit 1; }
[ -x "$BIN" ] || { echo "error: $BIN not found: swift build -c release" >&2; exit 1; }
BIN=$(realpath "$BIN")
mkdir -p "$OUT"
OUT=$(realpath "$OUT")
TOTAL=0
for seg in $TRACE; do TOTAL=$((TOTAL + ${seg#*:})); done

ID=$$
NS_S=ss-srv-$ID NS_A=ss-ada-$ID NS_F=ss-fix-$ID
TMP=$(mktemp -d)
cleanup() {
    for ns in "$NS_S" "$NS_A" "$NS_F"; do
        ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true
    done
    sleep 0.2
    for ns in "$NS_S" "$NS_A" "$NS_F"; do ip netns del "$ns" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT
for ns in "$NS_S" "$NS_A" "$NS_F"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
# pair 1: servers' side 10.77.1.1 <-> adaptive agent 10.77.1.2; pair 2: 10.77.2.1 <-> fixed agent 10.77.2.2
link() {  # $1 agent namespace, $2 subnet index
    local s=ssS$2-$ID a=ssA$2-$ID
    ip link add "$s" type veth peer name "$a"
    ip link set "$s" netns "$NS_S"; ip link set "$a" netns "$1"
    ip -n "$NS_S" addr add "10.77.$2.1/24" dev "$s"; ip -n "$1" addr add "10.77.$2.2/24" dev "$a"
    ip -n "$NS_S" link set "$s" up; ip -n "$1" link set "$a" up
    # downlink (results): delay only; uplink (features): delay + loss, then the rate
    if [ "$NETEM" = 1 ]; then
        ip netns exec "$NS_S" tc qdisc add dev "$s" root netem delay "${DELAY}ms"
        ip netns exec "$1" tc qdisc add dev "$a" root handle 1: netem delay "${DELAY}ms" loss "${LOSS}%"
        ip netns exec "$1" tc qdisc add dev "$a" parent 1: handle 2: tbf rate 20mbit burst 32kbit latency 400ms
    else
        ip netns exec "$1" tc qdisc add dev "$a" root handle 2: tbf rate 20mbit burst 32kbit latency 400ms
        if [ "$IPT" = 1 ]; then
            ip netns exec "$1" iptables -A OUTPUT -o "$a" -m statistic --mode random --probability "$(awk "BEGIN{print $LOSS/100}")" -j DROP
        fi
    fi
}
# netem (delay, loss) where the kernel has it; otherwise loss only, with iptables' statistic match.
NETEM=0 IPT=0
if ip netns exec "$NS_S" tc qdisc add dev lo root netem delay 1ms 2>/dev/null; then
    NETEM=1; ip netns exec "$NS_S" tc qdisc del dev lo root
else
    echo "warning: this kernel has no netem qdisc (sch_netem): no added delay" >&2
    if command -v iptables >/dev/null && ip netns exec "$NS_S" iptables -A OUTPUT -m statistic --mode random --probability 0 -j DROP 2>/dev/null; then
        IPT=1; echo "         loss ${LOSS} % with iptables -m statistic instead" >&2
    else
        echo "warning: no iptables statistic match either: no loss" >&2
    fi
fi
link "$NS_A" 1
link "$NS_F" 2
PARENT="root"; [ "$NETEM" = 1 ] && PARENT="parent 1:"
rate() {  # $1 Mbit/s, both uplinks
    ip netns exec "$NS_A" tc qdisc change dev "ssA1-$ID" $PARENT handle 2: tbf rate "${1}mbit" burst 32kbit latency 400ms
    ip netns exec "$NS_F" tc qdisc change dev "ssA2-$ID" $PARENT handle 2: tbf rate "${1}mbit" burst 32kbit latency 400ms
}

"$BIN" keygen --name server --out "$TMP/keys" >/dev/null
for a in car-1 rsu-1; do "$BIN" keygen --name "$a" --out "$TMP/keys/agents" >/dev/null; done
MODEL=$(realpath "$MODEL") SAMPLE=$PWD/Tests/Fixtures/sample.mcap
for g in 1 2; do
    cat > "$TMP/server$g.yaml" <<YAML
endpoint: tcp://10.77.$g.1:5555
curve: {secret_key: keys/server.key, allowed_keys: keys/agents}
fusion: {model: $MODEL}
metrics: {port: 0}
YAML
    cat > "$TMP/rsu$g.yaml" <<YAML
agent_id: rsu-1
server: tcp://10.77.$g.1:5555
curve: {server_key: keys/server.pub, secret_key: keys/agents/rsu-1.key}
source: {recording: $SAMPLE, agent: rsu_1, model: $MODEL, width_index: 3, bits: 8, loop: true}
YAML
done
cat > "$TMP/adaptive.yaml" <<YAML
agent_id: car-1
server: tcp://10.77.1.1:5555
curve: {server_key: keys/server.pub, secret_key: keys/agents/car-1.key}
source: {recording: $SAMPLE, agent: car_1, model: $MODEL, bits: 8, adapt: true, deadline_ms: 100, loop: true}
YAML
cat > "$TMP/fixed.yaml" <<YAML
agent_id: car-1
server: tcp://10.77.2.1:5555
curve: {server_key: keys/server.pub, secret_key: keys/agents/car-1.key}
source: {recording: $SAMPLE, agent: car_1, model: $MODEL, width_index: 3, bits: 8, deadline_ms: 100, loop: true}
YAML

FRAMES=$((TOTAL * 10))
for g in 1 2; do
    ip netns exec "$NS_S" "$BIN" server --config "$TMP/server$g.yaml" --duration $((TOTAL + 8)) --status-interval 0 \
        > "$OUT/server$g.out" 2> "$OUT/server$g.err" &
done
sleep 1
for g in 1 2; do
    ip netns exec "$NS_S" "$BIN" agent --config "$TMP/rsu$g.yaml" --frames $((FRAMES + 20)) > "$OUT/rsu$g.out" 2> "$OUT/rsu$g.err" &
done
ip netns exec "$NS_A" "$BIN" agent --config "$TMP/adaptive.yaml" --frames "$FRAMES" --report "$OUT/adaptive.jsonl" \
    > "$OUT/adaptive.out" 2> "$OUT/adaptive.err" &
ADA=$!
ip netns exec "$NS_F" "$BIN" agent --config "$TMP/fixed.yaml" --frames "$FRAMES" --report "$OUT/fixed.jsonl" \
    > "$OUT/fixed.out" 2> "$OUT/fixed.err" &
FIX=$!
# The trace starts when both shaped agents replay.
for _ in $(seq 100); do
    grep -q replaying "$OUT/adaptive.err" 2>/dev/null && grep -q replaying "$OUT/fixed.err" 2>/dev/null && break
    sleep 0.1
done
echo "[" > "$OUT/trace.json"
first=1
for seg in $TRACE; do
    mbit=${seg%%:*} secs=${seg#*:}
    rate "$mbit"
    t0=$(date +%s.%N)
    echo "$(date +%T) ${mbit} Mbit/s for ${secs} s"
    [ $first = 1 ] || echo "," >> "$OUT/trace.json"
    first=0
    printf '{"mbit": %s, "start": %s, "seconds": %s}' "$mbit" "$t0" "$secs" >> "$OUT/trace.json"
    sleep "$secs"
done
echo "]" >> "$OUT/trace.json"
wait $ADA || true
wait $FIX || true
echo "== adaptive agent =="; tail -n 4 "$OUT/adaptive.out"
echo "== fixed agent ==";    tail -n 4 "$OUT/fixed.out"
PY=python3
[ -x .venv/bin/python3 ] && PY=.venv/bin/python3
if "$PY" -c 'import numpy, matplotlib' 2>/dev/null; then
    "$PY" Benchmarks/shaped_link_report.py --dir "$OUT" --png "$OUT/shaped_link.png" --json "$OUT/shaped_link.json"
else
    echo "numpy and matplotlib are needed for the table and plot: $PY -m pip install -r Benchmarks/requirements.txt," \
         "then $PY Benchmarks/shaped_link_report.py --dir $OUT"
fi
