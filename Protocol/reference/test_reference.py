"""Tests of the reference codec against Protocol/vectors (run: python3 -m unittest discover -s
Protocol/reference -v)."""

import json
import random
import struct
import unittest
from pathlib import Path

import slimsplit_ref as ss
from slimsplit_ref import (FeatureFrame, Limits, WireError, build_payload, decode,
                           decode_payload, encode, from_json, to_json)

VECTORS = Path(__file__).resolve().parent.parent / "vectors"


def load(directory: str):
    for path in sorted((VECTORS / directory).glob("*.bin")):
        yield path.stem, path.read_bytes(), json.loads(path.with_suffix(".json").read_text())


class TestValidVectors(unittest.TestCase):
    def test_there_are_vectors(self):
        self.assertGreaterEqual(len(list(load("valid"))), 20)

    def test_decode_fields_and_reencode(self):
        for name, data, doc in load("valid"):
            with self.subTest(name):
                msg = decode(data)
                got = to_json(msg)
                self.assertEqual(got["kind"], doc["kind"])
                self.assertEqual(got["fields"], doc["fields"])
                if isinstance(msg, FeatureFrame):
                    self.assertEqual(got["mask"], doc["mask"])
                    self.assertEqual(got["values"], doc["values"])
                expected = data
                if doc.get("canonical", True) is False:
                    expected = (VECTORS / "valid" / doc["canonical_file"]).read_bytes()
                    self.assertNotEqual(expected, data)
                self.assertEqual(encode(msg), expected)

    def test_build_from_json(self):
        for name, data, doc in load("valid"):
            with self.subTest(name):
                msg = from_json(doc)
                if isinstance(msg, FeatureFrame) and msg.codec == 1:
                    again = decode(encode(msg))  # our LZ4 bytes may differ from the vector's
                    self.assertEqual(decode_payload(again), (doc["mask"], doc["values"]))
                    self.assertEqual(to_json(again)["fields"], doc["fields"])
                    continue
                expected = data
                if doc.get("canonical", True) is False:
                    expected = (VECTORS / "valid" / doc["canonical_file"]).read_bytes()
                self.assertEqual(encode(msg), expected)

    def test_trailing_bytes_remembered(self):
        msg = decode((VECTORS / "valid" / "hello_trailing.bin").read_bytes())
        self.assertEqual(msg.trailing, bytes([1, 2, 3, 4, 5, 6]))
        result = decode((VECTORS / "valid" / "result_3_rs44.bin").read_bytes())
        self.assertEqual([d.extra for d in result.detections], [bytes.fromhex("deadbeef")] * 3)


class TestInvalidVectors(unittest.TestCase):
    def test_every_reason_shown(self):
        reasons = {doc["error"] for _, _, doc in load("invalid")}
        single_message = set(ss.REASONS) - {"hello_required", "agent_mismatch", "stale_sequence",
                                            "unexpected_kind", "unauthenticated", "identity_mismatch",
                                            "model_mismatch", "ack_backlog"}
        self.assertEqual(reasons, single_message)

    def test_rejected_with_reason(self):
        for name, data, doc in load("invalid"):
            with self.subTest(name):
                with self.assertRaises(WireError) as ctx:
                    decode(data)
                self.assertEqual(ctx.exception.reason, doc["error"])


class TestCodec(unittest.TestCase):
    def test_crc32c_check_value(self):
        self.assertEqual(ss.crc32c(b"123456789"), 0xE3069283)
        self.assertEqual(ss.crc32c(b"56789", ss.crc32c(b"1234")), 0xE3069283)

    def test_pack_unpack_round_trip(self):
        rng = random.Random(1)
        for bits in range(1, 9):
            for n in (0, 1, 7, 8, 9, 63, 64, 65, 1000):
                with self.subTest(bits=bits, n=n):
                    values = [rng.randrange(1 << bits) for _ in range(n)]
                    packed = ss.pack_values(values, bits)
                    self.assertEqual(len(packed), (n * bits + 7) // 8)
                    self.assertEqual(ss.unpack_values(packed, bits, n), values)

    def test_pack_bit_order(self):
        # value j occupies stream bits j*b .. j*b+b-1, LSB first
        self.assertEqual(ss.pack_values([1, 0, 1], 1), b"\x05")
        self.assertEqual(ss.pack_values([0b101, 0b011, 0b110], 3), bytes([0b10011101, 0b1]))
        self.assertEqual(ss.pack_values([0xA, 0x5, 0xF], 4), b"\x5a\x0f")
        self.assertEqual(ss.pack_values([0x7F, 0x01], 7), b"\xff\x00")

    def test_padding_must_be_zero(self):
        with self.assertRaises(WireError) as ctx:
            ss.unpack_values(b"\x0d", 1, 3)
        self.assertEqual(ctx.exception.reason, "field_out_of_range")

    def test_frame_round_trip_all_bit_depths(self):
        for bits in range(1, 9):
            for codec in (0, 1):
                for masked in (False, True):
                    mask = [1 if i % 3 else 0 for i in range(24)] if masked else None
                    n = 5 * (sum(mask) if masked else 24)
                    values = [(i * 7) % (1 << bits) for i in range(n)]
                    payload, raw_length = build_payload(mask, values, bits, codec)
                    frame = FeatureFrame("a", 1, 2, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0), "m",
                                         0, bits, 5, 4, 6, 1, None, None, int(masked), codec,
                                         raw_length, payload)
                    back = decode(encode(frame))
                    self.assertEqual(back, frame)
                    self.assertEqual(decode_payload(back), (mask, values))

    def test_receiver_limits(self):
        data = (VECTORS / "valid" / "frame_b8.bin").read_bytes()
        for limits in (Limits(max_message_length=len(data) - 1), Limits(max_values=296),
                       Limits(max_width=10)):
            with self.subTest(limits=limits):
                with self.assertRaises(WireError) as ctx:
                    decode(data, limits)
                self.assertEqual(ctx.exception.reason, "over_limit")
        self.assertIsInstance(decode(data, Limits(max_message_length=len(data))), FeatureFrame)

    def test_check_order(self):
        good = (VECTORS / "valid" / "ack.bin").read_bytes()
        bad_version_and_magic = b"XXXX\x02" + good[5:]
        self.assertRaisesReason("bad_magic", bad_version_and_magic)
        # a wrong kind is reported only after the CRC
        self.assertRaisesReason("crc_mismatch", good[:5] + b"\x09" + good[6:])
        # flags are ignored
        flagged = ss.frame_message(ss.KIND_ACK, good[16:-4], flags=0xBEEF)
        self.assertEqual(encode(decode(flagged)), good)

    def assertRaisesReason(self, reason, data):
        with self.assertRaises(WireError) as ctx:
            decode(data)
        self.assertEqual(ctx.exception.reason, reason)

    def test_json_floats_exact(self):
        for name, _, doc in load("valid"):
            f32 = []
            fields = doc["fields"]
            f32 += fields.get("scales") or []
            f32 += [fields["max_rate_hz"]] if "max_rate_hz" in fields else []
            for d in fields.get("detections", []):
                f32 += [d["score"], d["yaw"], *d["center"], *d["size"]]
            for x in f32:
                self.assertEqual(struct.unpack("<f", struct.pack("<f", x))[0], x, name)


if __name__ == "__main__":
    unittest.main()
