#!/usr/bin/env bash
# Ack latency does not depend on fusion load: one agent's Ack RTT p50/p99 (Submit to Ack, as the
# agent measures it) with the server fusing only its frames, then with seven more agents and the
# server's engine forced to the portable kernels so that fusion saturates a core. Loopback, Curve
# off, release build. Prints JSON with both and the difference.
#   Benchmarks/ack_latency.sh [seconds-per-run]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-15}
swift build -c release --product slimsplit >/dev/null 2>&1
B=$PWD/.build/release/slimsplit
R=$PWD
work=$(mktemp -d)
trap 'pkill -TERM -f "slimsplit agent --config $work" 2>/dev/null || true; rm -rf "$work"' EXIT
run() {  # run NAME SERVER_KERNELS AGENTS...
    local name=$1 kernels=$2; shift 2
    local port=$((20000 + RANDOM % 20000))
    printf 'endpoint: tcp://127.0.0.1:%s\ncurve:\n  enabled: false\nfusion:\n  model: %s\n' "$port" "$R/Models/slimsplit-bev.safetensors" > "$work/server.yaml"
    SLIMSPLIT_KERNELS=$kernels "$B" server --config "$work/server.yaml" --status-interval 0 > "$work/$name-server.out" 2>&1 &
    local server=$! pids=()
    sleep 2
    for a in "$@"; do
        local id=${a%%:*} src=${a##*:}
        printf 'agent_id: %s\nserver: tcp://127.0.0.1:%s\ncurve:\n  enabled: false\nsource:\n  recording: %s\n  agent: %s\n  model: %s\n  bits: 4\n  loop: true\n' \
            "$id" "$port" "$R/Tests/Fixtures/sample.mcap" "$src" "$R/Models/slimsplit-bev.safetensors" > "$work/agent-$id.yaml"
        "$B" agent --config "$work/agent-$id.yaml" > "$work/$name-$id.out" 2>/dev/null &
        pids+=($!)
    done
    sleep "$secs"
    kill -TERM "${pids[@]}"; wait "${pids[@]}" 2>/dev/null || true
    kill -TERM "$server"; wait "$server" 2>/dev/null || true
}
run alone "" car-1:car_1
run loaded portable car-1:car_1 car-2:car_2 rsu-1:rsu_1 car-3:car_1 car-4:car_2 rsu-2:rsu_1 car-5:car_1 car-6:car_2
py=python3
[ -x .venv/bin/python3 ] && py=.venv/bin/python3
"$py" - "$work" <<'PY'
import json, sys
work = sys.argv[1]
def row(name, agent):
    for line in open(f"{work}/{name}-{agent}.out"):
        f = line.split()
        if f and f[0] == agent:
            return {"frames": int(f[1]), "acked": int(f[2]), "results": int(f[3]), "rtt_p50_ms": float(f[7]), "rtt_p99_ms": float(f[8])}
alone, loaded = row("alone", "car-1"), row("loaded", "car-1")
others = {a: row("loaded", a) for a in ("car-2", "rsu-1", "car-3", "car-4", "rsu-2", "car-5", "car-6")}
print(json.dumps({"benchmark": "ack_latency", "alone": alone, "loaded": loaded, "loaded_others": others,
                  "server_kernels_loaded": "portable",
                  "rtt_p99_difference_ms": round(loaded["rtt_p99_ms"] - alone["rtt_p99_ms"], 2)}, indent=2))
PY
