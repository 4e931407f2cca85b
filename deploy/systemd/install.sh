#!/usr/bin/env bash
# Installs the SlimSplit agent or server as a systemd service on a board or host:
#   sudo deploy/systemd/install.sh agent|server [--start]
# Builds the release binary if needed (or takes SLIMSPLIT_BINARY=path, e.g. the static release
# artifact of scripts/release), copies it to /usr/local/bin, the unit to
# /etc/systemd/system, creates the system user `slimsplit`, and /etc/slimsplit (an existing
# config there is kept; a new one is copied from Configs/ for you to edit: agent_id, server,
# key paths). Logs: journalctl -u slimsplit-agent (or -server).
set -euo pipefail
cd "$(dirname "$0")/../.."
role=${1:-}
[ "$role" = agent ] || [ "$role" = server ] || { echo "usage: $0 agent|server [--start]" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "$0: run as root (sudo)" >&2; exit 1; }
binary=${SLIMSPLIT_BINARY:-.build/release/slimsplit}
if [ ! -x "$binary" ]; then
    [ -z "${SLIMSPLIT_BINARY:-}" ] || { echo "$0: SLIMSPLIT_BINARY=$binary is not an executable" >&2; exit 1; }
    swift build -c release --product slimsplit
fi
install -m 0755 "$binary" /usr/local/bin/slimsplit
id slimsplit >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin slimsplit
install -d -m 0755 /etc/slimsplit
[ -f "/etc/slimsplit/$role.yaml" ] || install -m 0644 "Configs/$role.yaml" "/etc/slimsplit/$role.yaml"
# Keys kept under /etc/slimsplit/keys (secret keys are written 0600 by keygen) become readable
# by the service's group, and by no one else.
if [ -d /etc/slimsplit/keys ]; then chgrp -R slimsplit /etc/slimsplit/keys && chmod -R g+rX,o-rwx /etc/slimsplit/keys; fi
install -m 0644 "deploy/systemd/slimsplit-$role.service" /etc/systemd/system/
systemd-analyze verify "/etc/systemd/system/slimsplit-$role.service"
systemctl daemon-reload
if [ "${2:-}" = --start ]; then systemctl enable --now "slimsplit-$role"; systemctl --no-pager status "slimsplit-$role" || true; fi
echo "installed slimsplit-$role: edit /etc/slimsplit/$role.yaml, then: systemctl enable --now slimsplit-$role"
