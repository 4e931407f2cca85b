#!/usr/bin/env bash
# Graceful shutdown under load: a fusion server with a recording and four agents replaying the
# sample (release build, loopback, Curve off), SIGTERM to the server after a few seconds. Prints
# JSON: seconds from SIGTERM to exit, frames acknowledged and Results received per agent, and the
# recording's messages as the official `mcap` reader counts them. Exits non-zero if an
# acknowledged frame got no Result, the server took over 2 s, or the recording does not read.
#   Benchmarks/shutdown.sh [seconds-streaming]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-8}
swift build -c release --product slimsplit >/dev/null
B=$PWD/.build/release/slimsplit
R=$PWD
work=$(mktemp -d)
trap 'pkill -TERM -f "slimsplit agent --config $work" 2>/dev/null || true; rm -rf "$work"' EXIT
port=$((20000 + RANDOM % 20000))
cat > "$work/server.yaml" <<YAML
endpoint: tcp://127.0.0.1:$port
curve:
  enabled: false
fusion:
  model: $R/Models/slimsplit-bev.safetensors
  record: $work/fused.mcap
YAML
agents=(car-1:car_1 car-2:car_2 rsu-1:rsu_1 car-3:car_1)
for a in "${agents[@]}"; do
    id=${a%%:*} src=${a##*:}
    cat > "$work/agent-$id.yaml" <<YAML
agent_id: $id
server: tcp://127.0.0.1:$port
curve:
  enabled: false
source:
  recording: $R/Tests/Fixtures/sample.mcap
  agent: $src
  model: $R/Models/slimsplit-bev.safetensors
  bits: 4
  loop: true
YAML
done
"$B" server --config "$work/server.yaml" --status-interval 0 > "$work/server.out" 2> "$work/server.log" &
server=$!
sleep 2
pids=()
for a in "${agents[@]}"; do
    id=${a%%:*}
    "$B" agent --config "$work/agent-$id.yaml" > "$work/agent-$id.out" 2> "$work/agent-$id.log" &
    pids+=($!)
done
sleep "$secs"
t0=$(date +%s%N)
kill -TERM "$server"
while kill -0 "$server" 2>/dev/null; do sleep 0.01; done
t1=$(date +%s%N)
sleep 0.5
kill -TERM "${pids[@]}" 2>/dev/null || true
wait "${pids[@]}" 2>/dev/null || true
py=python3
[ -x .venv/bin/python3 ] && py=.venv/bin/python3
"$py" - "$work" "$(( (t1 - t0) / 1000000 ))" "${agents[@]}" <<'PY'
import json, sys
from collections import Counter
from mcap.reader import make_reader
work, exit_ms, agents = sys.argv[1], int(sys.argv[2]), [a.split(":")[0] for a in sys.argv[3:]]
per = {}
for a in agents:
    for line in open(f"{work}/agent-{a}.out"):
        f = line.split()
        if f and f[0] == a:
            per[a] = {"frames": int(f[1]), "acked": int(f[2]), "results": int(f[3])}
with open(f"{work}/fused.mcap", "rb") as fh:
    topics = Counter(ch.topic for _, ch, _ in make_reader(fh).iter_messages())
ok = exit_ms <= 2000 and len(per) == len(agents) and all(p["results"] >= p["acked"] for p in per.values())
ok = ok and topics.get("/fusion/detections", 0) >= sum(p["acked"] for p in per.values())
print(json.dumps({"benchmark": "shutdown", "exit_after_sigterm_ms": exit_ms, "agents": per,
                  "recording_messages_official_reader": dict(topics), "ok": ok}, indent=2))
sys.exit(0 if ok else 1)
PY
