"""Writes the seed corpus of every fuzz target (scripts/fuzz calls it) from committed files.

  python3 Tests/Fuzz/make_seeds.py OUT_DIR [MCAP_CONFORMANCE_DIR]

Seeds, per target: wire, the protocol's test vectors; mcap, the MCAP fixtures and the
conformance files; cdr, every ROS 2 message in the fixtures, prefixed with the byte that picks
its decoder; safetensors, small files of every dtype and the shipped model's metadata without
tensors; config, the shipped configs and scenes; rate-table, the shipped model's table; http,
requests as Prometheus and curl send them.
"""
import glob
import json
import os
import struct
import sys

import numpy as np
from mcap.reader import make_reader
from safetensors.numpy import save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
MAX_SEED = 64 * 1024
CDR_KIND = {"sensor_msgs/msg/PointCloud2": 0, "geometry_msgs/msg/PoseStamped": 1,
            "vision_msgs/msg/Detection3DArray": 2, "slimsplit_msgs/msg/Visibility": 3}


def put(out, target, name, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def copy_small(out, target, paths):
    for p in paths:
        if os.path.getsize(p) <= MAX_SEED:
            put(out, target, os.path.basename(os.path.dirname(p)) + "_" + os.path.basename(p), open(p, "rb").read())


def main():
    out = sys.argv[1]
    conformance = sys.argv[2] if len(sys.argv) > 2 else None
    vectors = glob.glob(os.path.join(ROOT, "Protocol/vectors/*/*.bin"))
    copy_small(out, "wire", vectors)
    mcaps = glob.glob(os.path.join(ROOT, "Tests/Fixtures/mcap/*.mcap"))
    if conformance and os.path.isdir(conformance):
        mcaps += glob.glob(os.path.join(conformance, "*/*.mcap"))
    copy_small(out, "mcap", mcaps)

    seen = 0
    for p in glob.glob(os.path.join(ROOT, "Tests/Fixtures/mcap/*.mcap")):
        try:
            with open(p, "rb") as f:
                for schema, _, message in make_reader(f).iter_messages():
                    kind = CDR_KIND.get(schema.name if schema else "")
                    if kind is not None and len(message.data) <= MAX_SEED:
                        put(out, "cdr", f"{seen:04d}", bytes([kind]) + message.data)
                        seen += 1
        except Exception:
            pass  # the deliberately broken fixtures

    st = os.path.join(out, "safetensors")
    os.makedirs(st, exist_ok=True)
    save_file({"f": np.arange(6, dtype=np.float32).reshape(2, 3), "i": np.arange(4, dtype=np.int8),
          "w": np.ones((2, 2), dtype=np.int32)}, os.path.join(st, "small.safetensors"), metadata={"format": "x"})
    save_file({"h": np.zeros(3, dtype=np.float16), "d": np.zeros(1, dtype=np.float64), "u": np.zeros(2, dtype=np.uint8)},
         os.path.join(st, "dtypes.safetensors"))
    model = open(os.path.join(ROOT, "Models/slimsplit-bev.safetensors"), "rb").read()
    n = struct.unpack("<Q", model[:8])[0]
    meta = json.loads(model[8:8 + n])["__metadata__"]
    header = json.dumps({"__metadata__": meta}).encode()
    header += b" " * (-len(header) % 8)
    put(out, "safetensors", "shipped_metadata.safetensors", struct.pack("<Q", len(header)) + header)
    put(out, "rate-table", "shipped.json", meta["rate_accuracy"].encode())

    for i, r in enumerate([b"GET /metrics HTTP/1.1\r\nHost: x\r\nUser-Agent: Prometheus/2.53\r\nAccept: text/plain\r\n\r\n",
                           b"GET / HTTP/1.0\r\n\r\n", b"GET /metrics?x=1 HTTP/1.0\r\n\r\n", b"GET /metrics HTTP/1.0\r\n"]):
        put(out, "http", f"request{i}", r)

    # The Foxglove WebSocket upgrade, then a masked subscribe frame.
    sub = b'{"op":"subscribe","subscriptions":[{"id":1,"channelId":1}]}'
    mask = b"\x01\x02\x03\x04"
    frame = bytes([0x81, 0x80 | len(sub)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(sub))
    put(out, "http", "upgrade", b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Protocol: foxglove.websocket.v1\r\n\r\n" + frame)

    # Velodyne: a capture of three VLP-16 packets (azimuths rising), and one bare packet.
    def vlp16(az0, product=0x22):
        p = bytearray()
        for b in range(12):
            p += b"\xff\xee" + struct.pack("<H", (az0 + 20 * b) % 36000)
            p += b"".join(struct.pack("<HB", 500 + 37 * c, c) for c in range(32))
        return bytes(p) + struct.pack("<I", 1000) + bytes([0x37, product])
    pkts = [vlp16(a) for a in (0, 240, 480)]
    cap = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    for i, p in enumerate(pkts):
        udp = struct.pack(">HHHH", 2368, 2368, 8 + len(p), 0) + p
        ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, bytes([192, 168, 1, 201]), bytes([255] * 4))
        eth = b"\xff" * 6 + b"\x60\x76\x88\x00\x00\x00" + b"\x08\x00"
        frame = eth + ip + udp
        cap += struct.pack("<IIII", 1, i * 1000, len(frame), len(frame)) + frame
    put(out, "velodyne", "three.pcap", cap)
    put(out, "velodyne", "packet.bin", pkts[1])

    configs = glob.glob(os.path.join(ROOT, "Configs/*.yaml")) + glob.glob(os.path.join(ROOT, "Configs/scenes/*.yaml"))
    copy_small(out, "config", configs)


if __name__ == "__main__":
    main()
