# Sourced by scripts/demo and scripts/test: installs what is missing, then puts Swift and the
# project's Python environment (.venv) on PATH. Debian/Ubuntu; needs root (or sudo) only for
# the system packages.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v swift >/dev/null 2>&1; then
    if [ -x /opt/swift/usr/bin/swift ]; then export PATH="/opt/swift/usr/bin:$PATH"; else
        echo "error: Swift 6 is required (https://www.swift.org/install/linux/), then run this again." >&2; exit 1
    fi
fi

missing=()
pkg-config --exists libzmq 2>/dev/null || missing+=(libzmq3-dev)
pkg-config --exists liblz4 2>/dev/null || missing+=(liblz4-dev)
pkg-config --exists libzstd 2>/dev/null || missing+=(libzstd-dev)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
# The test command also runs a real etcd (the fleet registry's tests); the demo does not need it.
if [ "${SLIMSPLIT_WITH_ETCD:-0}" = 1 ]; then command -v etcd >/dev/null 2>&1 || missing+=(etcd-server); fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing system packages: ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python3 ]; then python3 -m venv .venv; fi
if ! .venv/bin/python3 -c 'import zmq, lz4, mcap, mcap_ros2, safetensors, numpy, zstandard, websockets, onnxruntime' 2>/dev/null; then
    echo "installing Python packages into .venv: $(cat Protocol/reference/requirements.txt Tests/interop/requirements.txt | sort -u | tr '\n' ' ')"
    .venv/bin/python3 -m pip install -q --disable-pip-version-check -r Protocol/reference/requirements.txt -r Tests/interop/requirements.txt
fi
export PATH="$PWD/.venv/bin:$PATH"
