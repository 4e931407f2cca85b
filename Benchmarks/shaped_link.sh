#!/usr/bin/env bash
# A server and an adapting agent across a shaped link: two network namespaces joined by a veth
# pair (addresses exist only inside them), the agent's uplink shaped by tc tbf along a step trace
# (20 → 2 → 8 Mbit/s). Run as root. Everything it creates is removed on exit, also on failure.
#   Benchmarks/shaped_link.sh [slimsplit binary]      (default .build/release/slimsplit)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath "${1:-.build/release/slimsplit}")
NS_S=ss-srv-$$ NS_A=ss-agt-$$ V0=ssv0-$$ V1=ssv1-$$
TMP=$(mktemp -d)
cleanup() {
    ip netns pids "$NS_S" 2>/dev/null | xargs -r kill 2>/dev/null || true
    ip netns pids "$NS_A" 2>/dev/null | xargs -r kill 2>/dev/null || true
    ip netns del "$NS_S" 2>/dev/null || true
    ip netns del "$NS_A" 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT
ip netns add "$NS_S"; ip netns add "$NS_A"
ip link add "$V0" type veth peer name "$V1"
ip link set "$V0" netns "$NS_S"; ip link set "$V1" netns "$NS_A"
ip -n "$NS_S" addr add 10.77.0.1/24 dev "$V0"; ip -n "$NS_A" addr add 10.77.0.2/24 dev "$V1"
for ns in "$NS_S" "$NS_A"; do ip -n "$ns" link set lo up; done
ip -n "$NS_S" link set "$V0" up; ip -n "$NS_A" link set "$V1" up
shape() { ip netns exec "$NS_A" tc qdisc replace dev "$V1" root tbf rate "$1" burst 32kbit latency 300ms; }
shape 20mbit

"$BIN" keygen --name server --out "$TMP/keys" >/dev/null
"$BIN" keygen --name car-1 --out "$TMP/keys/agents" >/dev/null
cat > "$TMP/server.yaml" <<YAML
endpoint: tcp://10.77.0.1:5555
curve: {secret_key: keys/server.key, allowed_keys: keys/agents}
fusion: {model: $PWD/Models/slimsplit-bev.safetensors}
metrics: {port: 0}
YAML
cat > "$TMP/agent.yaml" <<YAML
agent_id: car-1
server: tcp://10.77.0.1:5555
curve: {server_key: keys/server.pub, secret_key: keys/agents/car-1.key}
source: {recording: $PWD/Tests/Fixtures/sample.mcap, agent: car_1, model: $PWD/Models/slimsplit-bev.safetensors,
         bits: 8, adapt: true, deadline_ms: 100, loop: true}
YAML
ip netns exec "$NS_S" "$BIN" server --config "$TMP/server.yaml" --duration 22 --status-interval 0 > "$TMP/server.out" 2> "$TMP/server.err" &
sleep 1
ip netns exec "$NS_A" "$BIN" agent --config "$TMP/agent.yaml" --frames 180 > "$TMP/agent.out" 2> "$TMP/agent.err" &
AGENT=$!
sleep 6; shape 2mbit; echo "t=6 s: 2 Mbit/s"
sleep 6; shape 8mbit; echo "t=12 s: 8 Mbit/s"
wait $AGENT || true
echo "== agent's adaptation log =="
grep -E "adapting" "$TMP/agent.err" | sed -E 's/^.*(width_index=[0-9]+).*(bits=[0-9]+).*(goodput_kbit_s=[0-9]+).*/\1 \2 \3/' || true
echo "== agent =="
cat "$TMP/agent.out"
