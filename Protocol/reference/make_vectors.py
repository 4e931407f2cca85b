#!/usr/bin/env python3
"""Write the SlimSplit v1 test vectors (PROTOCOL.md §9) into Protocol/vectors/{valid,invalid}.

Deterministic: no clocks, no randomness. Every vector is checked against the reference decoder
before it is written. Usage: python3 Protocol/reference/make_vectors.py [--out DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import struct
from pathlib import Path

import lz4.block

import slimsplit_ref as ss
from slimsplit_ref import (Ack, Boxes, Control, Detection, Handover, FeatureFrame, Hello, Result, WireError,
                           build_payload, decode, encode, encode_body, frame_message, to_json)

T0 = 1_700_000_000_123_456_789
AGENT, MODEL = "agent-01", "pointpillars-v2.1"
MODEL_HASH = hashlib.sha256(b"slimsplit test model").digest()
HALF = math.radians(15.0)
POSITION = (12.5, -3.75, 1.8)
ORIENTATION = (0.0, 0.0, math.sin(HALF), math.cos(HALF))  # yaw 30 degrees


def pattern(n: int, bits: int, a: int = 37, c: int = 5) -> list[int]:
    """n values (a·j + c) mod 2^bits: with a odd, any 2^bits consecutive ones cover the range."""
    return [(a * j + c) % (1 << bits) for j in range(n)]


def frame(bits: int, channels: int, height: int, width: int, *, values, mask=None,
          quant_mode: int = 0, scales=None, zero_points=None, codec: int = 0,
          sequence: int = 1, width_index: int = 3) -> FeatureFrame:
    payload, raw_length = build_payload(mask, values, bits, codec)
    if codec == 1:
        assert len(payload) < raw_length, "LZ4 vector payload must be compressible"
    if quant_mode == 0:
        scales = scales or [0.0390625 * (1 << (c % 4)) for c in range(channels)]
        zero_points = zero_points if zero_points is not None else \
            [[0, 1 << (bits - 1), (1 << bits) - 1][c % 3] for c in range(channels)]
    else:
        scales = zero_points = None
    return FeatureFrame(AGENT, sequence, T0 + sequence * 100_000_000, POSITION, ORIENTATION,
                        MODEL, width_index, bits, channels, height, width, quant_mode, scales,
                        zero_points, 1 if mask is not None else 0, codec, raw_length, payload)


def small_mask(cells: int) -> list[int]:
    return [1 if (5 * i + 1) % 7 < 4 else 0 for i in range(cells)]


def sparse_frame(bits: int, *, masked: bool, quant_mode: int, sequence: int) -> FeatureFrame:
    """C=8, H=16, W=16, mostly the zero point: compresses well with LZ4."""
    c, h, w = 8, 16, 16
    zp = (1 << bits) // 2 if quant_mode == 0 else 0
    mask = [1 if (i * 11) % 5 == 0 else 0 for i in range(h * w)] if masked else None
    cells = [i for i in range(h * w) if mask is None or mask[i]]
    values = [((i + 31 * ch) % (1 << bits)) if (i * 13 + ch * 7) % 29 == 0 else zp
              for ch in range(c) for i in cells]
    return frame(bits, c, h, w, values=values, mask=mask, quant_mode=quant_mode,
                 scales=[0.0078125 * (k + 1) for k in range(c)] if quant_mode == 0 else None,
                 zero_points=[zp] * c if quant_mode == 0 else None, codec=1, sequence=sequence)


def detections() -> list[Detection]:
    return [
        Detection(0, 0.875, (12.5, -3.25, 0.75), (4.5, 1.875, 1.5), 1.5, 17),
        Detection(3, 0.5, (5.0, 2.0, -0.25), (0.75, 0.625, 1.75), -0.5, 0),
        Detection(7, 0.0, (-20.125, 40.0, 1.0), (12.0, 2.5, 3.25), 3.140625, 4294967295),
    ]


def valid_vectors():
    """Yield (name, description, bytes, canonical_file or None)."""
    hello = Hello(AGENT, MODEL, MODEL_HASH, 1, [250, 500, 750, 1000], 0x88)
    yield "hello", "lidar agent, four widths, 4- and 8-bit features", encode(hello), None
    yield ("hello_single_width", "camera agent, one width, 1-bit only, zero model hash",
           encode(Hello("cam_7", "m", bytes(32), 2, [1000], 0x01)), None)
    body, _ = encode_body(hello)
    yield ("hello_trailing", "hello with 6 unknown trailing body bytes (a later minor revision)",
           frame_message(ss.KIND_HELLO, body + bytes([1, 2, 3, 4, 5, 6])), "hello.bin")

    for b in range(1, 9):
        yield (f"frame_b{b}", f"{b}-bit, C=3 H=9 W=11, inline quantization, no mask, no codec; "
               "values cover 0..2^b-1",
               encode(frame(b, 3, 9, 11, values=pattern(297, b), sequence=100 + b)), None)
    for b in range(1, 9):
        mask = small_mask(35)
        yield (f"frame_b{b}_mask", f"{b}-bit, C=3 H=5 W=7, static quantization, bitmap mask "
               f"({sum(mask)} of 35 cells), no codec",
               encode(frame(b, 3, 5, 7, values=pattern(3 * sum(mask), b, 11, 1), mask=mask,
                            quant_mode=1, sequence=200 + b)), None)
    yield ("frame_b3_mask_empty", "3-bit, mask with no cell sent: the payload is the mask only",
           encode(frame(3, 3, 5, 7, values=[], mask=[0] * 35, sequence=300)), None)
    yield ("frame_b5_mask_full", "5-bit, mask with every cell sent, inline quantization",
           encode(frame(5, 3, 5, 7, values=pattern(105, 5), mask=[1] * 35, sequence=301)), None)
    yield ("frame_1x1x1", "one 8-bit value, C=H=W=1",
           encode(frame(8, 1, 1, 1, values=[200], scales=[2.0], zero_points=[128],
                        sequence=302, width_index=0)), None)
    yield ("frame_b8_lz4", "8-bit, C=8 H=16 W=16, inline quantization, no mask, LZ4 block",
           encode(sparse_frame(8, masked=False, quant_mode=0, sequence=400)), None)
    yield ("frame_b2_lz4", "2-bit, C=8 H=16 W=16, inline quantization, no mask, LZ4 block",
           encode(sparse_frame(2, masked=False, quant_mode=0, sequence=401)), None)
    yield ("frame_b4_mask_lz4", "4-bit, C=8 H=16 W=16, static quantization, mask, LZ4 block",
           encode(sparse_frame(4, masked=True, quant_mode=1, sequence=402)), None)
    # A codebook frame: C = 3 residual levels, 7-bit codeword indices at the sent cells.
    yield ("frame_codebook_b7_mask", "codebook (quant_mode 2): 3 levels of 7-bit indices, H=8 W=8, mask, "
           "no codec",
           encode(frame(7, 3, 8, 8, values=pattern(3 * sum(small_mask(64)), 7), mask=small_mask(64),
                        quant_mode=2, sequence=403)), None)

    yield "ack", "ack of frame 108", encode(Ack(108, T0 + 10_812_345_678, 1234, 250_000)), None
    yield ("ack_saturated", "ack with queue_delay_ns saturated at 2^32-1",
           encode(Ack(2**64 - 1, T0 + 5, 20, 2**32 - 1)), None)

    yield ("result_empty", "result with no detections and no frame (sequence 0)",
           encode(Result(0, 0, T0 + 50_000_000, [])), None)
    result = Result(108, T0 + 800_000_000, T0 + 812_000_000, detections())
    yield ("result_3", "three detections, 40-byte records (class 7 is reserved but accepted)",
           encode(result), None)
    body, payload = encode_body(result)
    body = body[:-2] + struct.pack("<H", 44)
    records = b"".join(payload[i:i + 40] + bytes.fromhex("deadbeef") for i in range(0, 120, 40))
    yield ("result_3_rs44", "result_3 with 44-byte records (4 unknown bytes each, skipped)",
           frame_message(ss.KIND_RESULT, body, records), "result_3.bin")

    yield ("control_welcome", "welcome: epoch 1, no caps",
           encode(Control(1, 255, 8, 0.0, 0)), None)
    yield ("control", "bandwidth cap: width index <= 1, 4 bits, 12.5 Hz",
           encode(Control(7, 1, 4, 12.5, 1)), None)
    yield ("control_reserved_reason", "reason 9 is reserved and accepted",
           encode(Control(4294967295, 0, 1, 0.25, 9)), None)

    key = bytes(range(1, 33))
    yield ("handover_prepare", "prepare: mirror frames to region east at tcp://10.0.0.2:5555, Curve key 01..20",
           encode(Handover(3, 1, "east", "tcp://10.0.0.2:5555", key)), None)
    yield ("handover_commit", "commit: tcp://east.fleet.local:5555 is home now, no Curve",
           encode(Handover(4, 2, "east", "tcp://east.fleet.local:5555")), None)
    yield ("handover_cancel", "cancel the session to region west",
           encode(Handover(5, 0, "west", "tcp://10.0.0.1:5555", key)), None)
    yield ("handover_standby", "standby: ipc:///run/slimsplit/center.sock if this server goes silent",
           encode(Handover(4294967295, 3, "center", "ipc:///run/slimsplit/center.sock")), None)
    body, _ = encode_body(Handover(3, 1, "east", "tcp://10.0.0.2:5555", key))
    yield ("handover_trailing", "handover_prepare with 3 bytes of a later revision's fields (skipped)",
           frame_message(ss.KIND_HANDOVER, body + b"\x01\x02\x03"), "handover_prepare.bin")

    boxes = Boxes(AGENT, 109, T0 + 900_000_000, POSITION, ORIENTATION, detections())
    yield ("boxes_3", "an agent's own three detections in its sensor frame (revision 1.2)",
           encode(boxes), None)
    yield ("boxes_empty", "an agent that sees nothing this frame still sends its pose",
           encode(Boxes(AGENT, 110, T0 + 1_000_000_000, POSITION, ORIENTATION, [])), None)
    body, payload = encode_body(boxes)
    yield ("boxes_trailing", "boxes_3 with 2 bytes of a later revision's fields (skipped)",
           frame_message(ss.KIND_BOXES, body + b"\x07\x07", payload), "boxes_3.bin")


def invalid_vectors():
    """Yield (name, reason, description, bytes)."""
    hello = Hello(AGENT, MODEL, MODEL_HASH, 1, [250, 500, 750, 1000], 0x88)
    hello_bin = encode(hello)
    hello_body, _ = encode_body(hello)
    ack = Ack(108, T0, 1234, 250_000)
    ack_body, _ = encode_body(ack)
    f4 = frame(4, 3, 9, 11, values=pattern(297, 4), sequence=104)
    f8 = frame(8, 3, 9, 11, values=pattern(297, 8), sequence=108)
    f3m = frame(3, 3, 5, 7, values=pattern(3 * sum(small_mask(35)), 3, 11, 1),
                mask=small_mask(35), quant_mode=1, sequence=203)
    lz = sparse_frame(8, masked=False, quant_mode=0, sequence=400)
    raw = lz4.block.decompress(lz.payload, uncompressed_size=lz.raw_length)
    rep = dataclasses.replace

    def with_payload(f: FeatureFrame, payload: bytes) -> bytes:
        return encode(rep(f, payload=payload))

    yield "truncated", "truncated", "the first 19 bytes of a Hello", hello_bin[:19]
    yield "truncated_empty", "truncated", "an empty message", b""
    yield ("bad_magic", "bad_magic", "magic SLSQ, CRC valid over the altered bytes",
           frame_message(ss.KIND_HELLO, hello_body, magic=b"SLSQ"))
    yield ("unsupported_version", "unsupported_version", "version 2, CRC valid",
           frame_message(ss.KIND_ACK, ack_body, version=2))
    head = ss.HEADER.pack(ss.MAGIC, 1, ss.KIND_HELLO, 0, 65537, 0)
    yield ("over_limit_body_length", "over_limit",
           "body_length 65537 in a 20-byte message (checked before the length)",
           head + struct.pack("<I", ss.crc32c(head)))
    yield ("over_limit_values", "over_limit",
           "FeatureFrame C=1024 H=1024 W=17: C*H*W > 2^24 (checked before the payload)",
           encode(FeatureFrame(AGENT, 1, T0, POSITION, ORIENTATION, MODEL, 3, 8, 1024, 1024, 17,
                               1, None, None, 0, 0, 0, b"")))
    yield ("over_limit_channels", "over_limit",
           "FeatureFrame C=1025 H=1 W=1: channels above the default receiver limit 1024",
           encode(FeatureFrame(AGENT, 1, T0, POSITION, ORIENTATION, MODEL, 3, 8, 1025, 1, 1,
                               1, None, None, 0, 0, 1025, bytes(1025))))
    yield ("length_mismatch_long", "length_mismatch", "a valid Ack followed by one extra byte",
           encode(ack) + b"\x00")
    yield ("length_mismatch_short", "length_mismatch", "a Control missing its last byte",
           encode(Control(1, 255, 8, 0.0, 0))[:-1])
    bad = bytearray(encode(f4))
    bad[-5] ^= 0x01
    yield "crc_mismatch", "crc_mismatch", "frame_b4 with one payload bit flipped", bytes(bad)
    yield ("unknown_kind", "unknown_kind", "kind 9 with a 4-byte body, CRC valid",
           frame_message(9, b"\x01\x02\x03\x04"))
    yield ("unknown_kind_zero", "unknown_kind", "kind 0, empty body, CRC valid",
           frame_message(0, b""))
    yield ("body_truncated_hello", "body_truncated", "Hello body without its bits_mask byte",
           frame_message(ss.KIND_HELLO, hello_body[:-1]))
    yield ("body_truncated_ack", "body_truncated", "Ack body of 20 bytes (needs 24)",
           frame_message(ss.KIND_ACK, ack_body[:-4]))
    f4_body, f4_payload = encode_body(f4)
    yield ("body_truncated_frame", "body_truncated",
           "FeatureFrame body without raw_length (the payload follows)",
           frame_message(ss.KIND_FEATURE_FRAME, f4_body[:-4], f4_payload))

    yield ("field_out_of_range_bits_0", "field_out_of_range",
           "bits 0 (static quantization, empty payload, raw_length 0)",
           encode(FeatureFrame(AGENT, 1, T0, POSITION, ORIENTATION, MODEL, 3, 0, 3, 9, 11,
                               1, None, None, 0, 0, 0, b"")))
    yield "field_out_of_range_bits_9", "field_out_of_range", "frame_b8 with bits 9", \
        encode(rep(f8, bits=9))
    yield ("field_out_of_range_zero_point", "field_out_of_range",
           "frame_b4 with zero_points[1] = 16 (must be < 2^4)",
           encode(rep(f4, zero_points=[0, 16, 15])))
    yield ("field_out_of_range_scale_zero", "field_out_of_range", "frame_b4 with scales[2] = 0",
           encode(rep(f4, scales=[0.0390625, 0.078125, 0.0])))
    yield ("field_out_of_range_scale_nan", "field_out_of_range", "frame_b4 with scales[0] = NaN",
           encode(rep(f4, scales=[math.nan, 0.078125, 0.15625])))
    yield ("field_out_of_range_orientation", "field_out_of_range",
           "frame_b4 with quaternion (0, 0, 0, 1.01): |q| outside 1 ± 1e-3",
           encode(rep(f4, orientation=(0.0, 0.0, 0.0, 1.01))))
    yield ("field_out_of_range_agent_id", "field_out_of_range",
           "frame_b4 with agent_id 'agent 01' (space is not an identifier character)",
           encode(rep(f4, agent_id="agent 01")))
    yield ("field_out_of_range_quant_mode", "field_out_of_range", "frame_b8 with quant_mode 3",
           frame_message(ss.KIND_FEATURE_FRAME,
                         *_patch_quant_mode(encode_body(rep(f8, quant_mode=1, scales=None,
                                                            zero_points=None)))))
    m = f3m.payload
    yield ("field_out_of_range_mask_padding", "field_out_of_range",
           "frame_b3_mask with padding bit 39 of the mask set (35 cells)",
           with_payload(f3m, m[:4] + bytes([m[4] | 0x80]) + m[5:]))
    p = f4.payload  # 297 4-bit values: the last byte holds one value and 4 padding bits
    yield ("field_out_of_range_value_padding", "field_out_of_range",
           "frame_b4 with a padding bit after the last value set",
           with_payload(f4, p[:-1] + bytes([p[-1] | 0x10])))
    yield ("field_out_of_range_sensor_kind", "field_out_of_range", "Hello with sensor_kind 4",
           encode(rep(hello, sensor_kind=4)))
    yield ("field_out_of_range_widths_order", "field_out_of_range",
           "Hello with widths [250, 250, 1000] (not strictly increasing)",
           encode(rep(hello, widths=[250, 250, 1000])))
    yield ("field_out_of_range_width_zero", "field_out_of_range", "Hello with widths [0, 1000]",
           encode(rep(hello, widths=[0, 1000])))
    yield ("field_out_of_range_bits_mask", "field_out_of_range", "Hello with bits_mask 0",
           encode(rep(hello, bits_mask=0)))
    yield ("field_out_of_range_hello_payload", "field_out_of_range",
           "Hello with a 1-byte payload", frame_message(ss.KIND_HELLO, hello_body, b"\x00"))
    yield ("field_out_of_range_handover_action", "field_out_of_range", "Handover with action 4",
           encode(Handover(1, 4, "east", "tcp://10.0.0.2:5555")))
    yield ("field_out_of_range_handover_endpoint", "field_out_of_range",
           "Handover whose endpoint is http://10.0.0.2 (not tcp:// or ipc://)",
           encode(Handover(1, 2, "east", "http://10.0.0.2")))
    yield ("field_out_of_range_handover_endpoint_space", "field_out_of_range",
           "Handover whose endpoint has a space in it",
           encode(Handover(1, 2, "east", "tcp://10.0.0.2 :5555")))
    yield ("body_truncated_handover_key", "body_truncated", "Handover missing the last 16 bytes of server_key",
           frame_message(ss.KIND_HANDOVER, encode_body(Handover(1, 2, "east", "tcp://10.0.0.2:5555"))[0][:-16]))
    b_body, b_payload = encode_body(Boxes(AGENT, 109, T0, POSITION, ORIENTATION, detections()))
    yield ("payload_size_mismatch_boxes", "payload_size_mismatch",
           "Boxes with detection_count 3 and a 119-byte payload",
           frame_message(ss.KIND_BOXES, b_body, b_payload[:119]))
    bad = detections()
    bad[1] = dataclasses.replace(bad[1], score=1.5)
    yield ("field_out_of_range_boxes_score", "field_out_of_range", "Boxes whose second detection has score 1.5",
           encode(Boxes(AGENT, 109, T0, POSITION, ORIENTATION, bad)))
    yield ("field_out_of_range_boxes_orientation", "field_out_of_range",
           "Boxes whose orientation quaternion has norm 2",
           encode(Boxes(AGENT, 109, T0, POSITION, (0.0, 0.0, 0.0, 2.0), detections())))
    yield ("field_out_of_range_max_bits", "field_out_of_range", "Control with max_bits 0",
           encode(Control(2, 255, 0, 0.0, 1)))
    yield ("field_out_of_range_max_rate", "field_out_of_range", "Control with max_rate_hz -1",
           encode(Control(2, 255, 8, -1.0, 1)))
    yield ("field_out_of_range_record_size", "field_out_of_range",
           "Result with record_size 39 and no detections",
           frame_message(ss.KIND_RESULT, struct.pack("<QQQHH", 0, 0, T0, 0, 39)))
    dets = detections()
    dets[1] = rep(dets[1], size=(0.75, 0.0, 1.75))
    yield ("field_out_of_range_detection_size", "field_out_of_range",
           "Result whose second detection has width 0",
           encode(Result(108, T0, T0 + 1, dets)))

    yield ("payload_size_mismatch_values", "payload_size_mismatch",
           "frame_b4 missing its last payload byte, raw_length = P",
           encode(rep(f4, payload=f4.payload[:-1], raw_length=f4.raw_length - 1)))
    yield ("payload_size_mismatch_raw_length", "payload_size_mismatch",
           "frame_b4 (codec 0) with raw_length one less than the payload length",
           encode(rep(f4, raw_length=f4.raw_length - 1)))
    yield ("payload_size_mismatch_bound", "payload_size_mismatch",
           "frame_b8_lz4 with raw_length 2049 > C*H*W*8/8 (rejected before LZ4 decoding)",
           encode(rep(lz, raw_length=lz.raw_length + 1)))
    r_body, r_payload = encode_body(Result(108, T0, T0 + 1, detections()))
    yield ("payload_size_mismatch_result", "payload_size_mismatch",
           "Result with detection_count 3 and an 80-byte payload",
           frame_message(ss.KIND_RESULT, r_body, r_payload[:80]))

    yield ("codec_error_overrun", "codec_error",
           "frame_b8_lz4 whose LZ4 block decodes to raw_length + 16 bytes",
           with_payload(lz, lz4.block.compress(raw + bytes(16), store_size=False)))
    yield ("codec_error_short", "codec_error",
           "frame_b8_lz4 whose LZ4 block decodes to raw_length - 1 bytes",
           with_payload(lz, lz4.block.compress(raw[:-1], store_size=False)))
    yield ("codec_error_garbage", "codec_error",
           "frame_b8_lz4 whose payload is 16 bytes of 0xFF (literal length runs past the input)",
           with_payload(lz, b"\xff" * 16))
    yield ("codec_error_offset", "codec_error",
           "frame_b8_lz4 whose LZ4 block has a match offset before the start of the output",
           with_payload(lz, b"\x10A\x10\x00\x10B"))


def _patch_quant_mode(body_payload: tuple[bytes, bytes]) -> tuple[bytes, bytes]:
    """Set quant_mode (the byte before mask_mode, codec, raw_length) of a static frame to 3."""
    body, payload = body_payload
    return body[:-7] + b"\x03" + body[-6:], payload


# ---------------------------------------------------------------------------------------------


def dumps(obj, indent: int = 0) -> str:
    """JSON with objects one key a line and lists of scalars on one line."""
    pad, inner = "  " * indent, "  " * (indent + 1)
    if isinstance(obj, dict):
        items = [f"{inner}{json.dumps(k)}: {dumps(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list) and any(isinstance(v, (dict, list)) for v in obj):
        if all(isinstance(v, list) for v in obj):
            return "[" + ", ".join(dumps(v) for v in obj) + "]"
        return "[\n" + ",\n".join(inner + dumps(v, indent + 1) for v in obj) + "\n" + pad + "]"
    if isinstance(obj, list):
        return "[" + ", ".join(json.dumps(v) for v in obj) + "]"
    return json.dumps(obj, allow_nan=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "vectors")
    args = ap.parse_args()
    valid_dir, invalid_dir = args.out / "valid", args.out / "invalid"
    for d in (valid_dir, invalid_dir):
        d.mkdir(parents=True, exist_ok=True)
        for old in list(d.glob("*.bin")) + list(d.glob("*.json")):
            old.unlink()

    names = set()
    for name, description, data, canonical in valid_vectors():
        assert name not in names, name
        names.add(name)
        msg = decode(data)
        doc = to_json(msg)
        doc = {"kind": doc.pop("kind"), "description": description, **doc}
        if canonical:
            assert encode(msg) == (valid_dir / canonical).read_bytes(), name
            assert encode(msg) != data
            doc["canonical"], doc["canonical_file"] = False, canonical
        else:
            assert encode(msg) == data, name
        (valid_dir / f"{name}.bin").write_bytes(data)
        (valid_dir / f"{name}.json").write_text(dumps(doc) + "\n")

    for name, reason, description, data in invalid_vectors():
        assert name not in names, name
        names.add(name)
        try:
            decode(data)
        except WireError as exc:
            assert exc.reason == reason, (name, exc)
        else:
            raise AssertionError(f"{name} decodes")
        (invalid_dir / f"{name}.bin").write_bytes(data)
        (invalid_dir / f"{name}.json").write_text(
            dumps({"error": reason, "description": description}) + "\n")
    print(f"wrote {len(names)} vectors to {args.out}")


if __name__ == "__main__":
    main()
