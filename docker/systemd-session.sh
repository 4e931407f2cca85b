#!/usr/bin/env bash
# Run by scripts/docker-check inside a throwaway container whose PID 1 is systemd (never on a
# board you use: it overwrites /etc/slimsplit). Installs the server and agent units with
# deploy/systemd/install.sh exactly as the README tells a board owner, with a local server and
# Curve keys, runs the agent's replay of the sample as a service, stops the server, then kills it
# with SIGKILL to see Restart=on-failure. Prints key=value lines for the check script, and the
# agent's journal.
#   usage: docker/systemd-session.sh BINARY   (from the checkout's root)
set -euo pipefail
binary=$1
mkdir -p /etc/slimsplit/keys/agents
"$binary" keygen --name server --out /etc/slimsplit/keys
"$binary" keygen --name car-1 --out /etc/slimsplit/keys/agents
cat >/etc/slimsplit/server.yaml <<'YAML'
endpoint: tcp://127.0.0.1:5555
curve: {secret_key: keys/server.key, allowed_keys: keys/agents}
fusion: {model: /opt/slimsplit/Models/slimsplit-deep.safetensors, record: /var/lib/slimsplit/fused.mcap}
metrics: {port: 9464, host: 127.0.0.1}
YAML
cat >/etc/slimsplit/agent.yaml <<'YAML'
agent_id: car-1
server: tcp://127.0.0.1:5555
curve: {server_key: keys/server.pub, secret_key: keys/agents/car-1.key}
source: {recording: /opt/slimsplit/recordings/sample.mcap, agent: car_1, model: /opt/slimsplit/Models/slimsplit-deep.safetensors, payload: codebook, threshold: 0.2, adapt: true, loop: false}
YAML
echo "== install"
SLIMSPLIT_BINARY=$binary deploy/systemd/install.sh server
SLIMSPLIT_BINARY=$binary deploy/systemd/install.sh agent
echo "verify=ok"
systemctl enable --now slimsplit-server
for _ in $(seq 40); do slimsplit health --config /etc/slimsplit/server.yaml 2>/dev/null && break; sleep 0.5; done
echo "server_active=$(systemctl is-active slimsplit-server)"
echo "== agent --check, as the service user"
runuser -u slimsplit -- slimsplit agent --config /etc/slimsplit/agent.yaml --check || true
systemctl start slimsplit-agent
for _ in $(seq 240); do [ "$(systemctl is-active slimsplit-agent)" = active ] || break; sleep 0.5; done
echo "agent_result=$(systemctl show -p Result --value slimsplit-agent)"
echo "agent_status=$(systemctl show -p ExecMainStatus --value slimsplit-agent)"
echo "== agent journal"
journalctl -u slimsplit-agent -o cat --no-pager | tail -20
echo "== server metrics"
slimsplit health --config /etc/slimsplit/server.yaml --print | grep -E '^slimsplit_(frames_total|fusion_results_total)' || true
t0=$(date +%s%N)
systemctl stop slimsplit-server
echo "server_stop_ms=$((($(date +%s%N) - t0) / 1000000))"
echo "server_result=$(systemctl show -p Result --value slimsplit-server)"
cp /var/lib/slimsplit/fused.mcap /root/fused.mcap
systemctl start slimsplit-server
sleep 1
systemctl kill -s KILL slimsplit-server
for _ in $(seq 20); do
    sleep 0.5
    [ "$(systemctl show -p NRestarts --value slimsplit-server)" -ge 1 ] && [ "$(systemctl is-active slimsplit-server)" = active ] && break
done
echo "restarts=$(systemctl show -p NRestarts --value slimsplit-server)"
echo "after_kill=$(systemctl is-active slimsplit-server)"
echo "enabled=$(systemctl is-enabled slimsplit-server)"
