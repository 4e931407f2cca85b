"""SlimSplit wire protocol v1: reference codec written from Protocol/PROTOCOL.md alone.

`encode(msg)` writes the canonical v1 bytes of a message; `decode(data)` checks every rule of the
spec in its order and raises `WireError(reason)` with a §7 reason code. FeatureFrame payloads are
kept exactly as received; `decode_payload` / `build_payload` convert between them and values.
"""

from __future__ import annotations

import math
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

MAGIC = b"SLSP"
VERSION = 1
HEADER = struct.Struct("<4sBBHII")  # magic, version, kind, flags, body_length, payload_length
HEADER_SIZE = 16
MAX_BODY_LENGTH = 65536
RECORD_SIZE = 40
MAX_DETECTIONS = 4096

KIND_HELLO, KIND_FEATURE_FRAME, KIND_ACK, KIND_RESULT, KIND_CONTROL, KIND_HANDOVER, KIND_BOXES = range(1, 8)
KIND_NAMES = {1: "Hello", 2: "FeatureFrame", 3: "Ack", 4: "Result", 5: "Control", 6: "Handover", 7: "Boxes"}

REASONS = (
    "truncated", "bad_magic", "unsupported_version", "over_limit", "length_mismatch",
    "crc_mismatch", "unknown_kind", "body_truncated", "field_out_of_range",
    "payload_size_mismatch", "codec_error", "hello_required", "agent_mismatch",
    "stale_sequence", "unexpected_kind", "unauthenticated", "identity_mismatch", "model_mismatch",
    "ack_backlog",
)

_IDENT = re.compile(rb"[A-Za-z0-9._-]{1,64}")


class WireError(Exception):
    """A message was rejected; `reason` is one of the §7 reason codes."""

    def __init__(self, reason: str, detail: str = ""):
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Limits:
    """Receiver limits (§6). C, H, W above their limit, C·H·W above `max_values` and messages
    longer than `max_message_length` are rejected with `over_limit`."""

    max_message_length: int = 16 * 1024 * 1024
    max_channels: int = 1024
    max_height: int = 1024
    max_width: int = 1024
    max_values: int = 1 << 24


DEFAULT_LIMITS = Limits()

# ---------------------------------------------------------------------------------------------
# CRC-32C (Castagnoli), reflected polynomial 0x82F63B78, table driven.


def _make_crc_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _make_crc_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC-32C of `data`; pass a previous result as `crc` to continue it."""
    c = crc ^ 0xFFFFFFFF
    table = _CRC_TABLE
    for byte in data:
        c = table[(c ^ byte) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------
# Messages. Each dataclass may remember unknown trailing body bytes in `trailing` (ignored by
# equality and by `encode`, which always writes the canonical v1 body).


@dataclass
class Hello:
    agent_id: str
    model_id: str
    model_hash: bytes
    sensor_kind: int
    widths: list[int]
    bits_mask: int
    trailing: bytes = field(default=b"", compare=False, repr=False)
    kind = KIND_HELLO


@dataclass
class FeatureFrame:
    agent_id: str
    sequence: int
    capture_time_ns: int
    position: tuple[float, float, float]
    orientation: tuple[float, float, float, float]
    model_id: str
    width_index: int
    bits: int
    channels: int
    height: int
    width: int
    quant_mode: int  # 0 inline, 1 static (the model's), 2 codebook (the model's residual codebooks)
    scales: list[float] | None  # only with quant_mode 0
    zero_points: list[int] | None  # only with quant_mode 0
    mask_mode: int
    codec: int
    raw_length: int
    payload: bytes  # exactly as sent / received (codec not undone)
    trailing: bytes = field(default=b"", compare=False, repr=False)
    kind = KIND_FEATURE_FRAME


@dataclass
class Ack:
    sequence: int
    receive_time_ns: int
    bytes_received: int
    queue_delay_ns: int
    trailing: bytes = field(default=b"", compare=False, repr=False)
    kind = KIND_ACK


@dataclass
class Detection:
    class_id: int
    score: float
    center: tuple[float, float, float]
    size: tuple[float, float, float]
    yaw: float
    track_id: int
    extra: bytes = field(default=b"", compare=False, repr=False)  # record bytes beyond 40


@dataclass
class Result:
    sequence: int
    capture_time_ns: int
    fusion_time_ns: int
    detections: list[Detection]
    record_size: int = RECORD_SIZE  # as received; `encode` always writes 40
    trailing: bytes = field(default=b"", compare=False, repr=False)
    kind = KIND_RESULT


@dataclass
class Control:
    epoch: int
    max_width_index: int
    max_bits: int
    max_rate_hz: float
    reason: int
    trailing: bytes = field(default=b"", compare=False, repr=False)
    kind = KIND_CONTROL


HANDOVER_CANCEL, HANDOVER_PREPARE, HANDOVER_COMMIT, HANDOVER_STANDBY = 0, 1, 2, 3


@dataclass
class Handover:
    epoch: int
    action: int
    region: str
    endpoint: str
    server_key: bytes = bytes(32)
    trailing: bytes = field(default=b"", compare=False, repr=False)
    kind = KIND_HANDOVER


@dataclass
class Boxes:
    """An agent's own detections in its sensor frame (§4.7, revision 1.2)."""
    agent_id: str
    sequence: int
    capture_time_ns: int
    position: tuple[float, float, float]
    orientation: tuple[float, float, float, float]
    detections: list[Detection]
    record_size: int = RECORD_SIZE  # as received; `encode` always writes 40
    trailing: bytes = field(default=b"", compare=False, repr=False)
    kind = KIND_BOXES


Message = Hello | FeatureFrame | Ack | Result | Control | Handover | Boxes

# ---------------------------------------------------------------------------------------------
# Bit packing (LSB first) and FeatureFrame payloads.


def packed_size(n: int, bits: int) -> int:
    """⌈n·bits/8⌉."""
    return (n * bits + 7) // 8


def pack_values(values, bits: int) -> bytes:
    """Pack unsigned `bits`-bit values LSB first; padding bits are 0."""
    if not 1 <= bits <= 8:
        raise ValueError("bits must be 1..8")
    values = list(values)
    limit = 1 << bits
    if any(not 0 <= v < limit for v in values):
        raise ValueError(f"value outside 0..{limit - 1}")
    if bits == 8:
        return bytes(values)
    out = bytearray()
    for g in range(0, len(values), 8):  # 8 values make exactly `bits` bytes
        acc = 0
        for t, v in enumerate(values[g:g + 8]):
            acc |= v << (t * bits)
        out += acc.to_bytes(bits, "little")
    return bytes(out[:packed_size(len(values), bits)])


def unpack_values(data: bytes, bits: int, n: int) -> list[int]:
    """Inverse of `pack_values`. Wrong length: payload_size_mismatch; non-zero padding bits:
    field_out_of_range."""
    if len(data) != packed_size(n, bits):
        raise WireError("payload_size_mismatch", f"{len(data)} bytes for {n} values of {bits} bits")
    if n * bits % 8 and data[-1] >> (n * bits % 8):
        raise WireError("field_out_of_range", "non-zero padding bits")
    if bits == 8:
        return list(data)
    mask = (1 << bits) - 1
    out: list[int] = []
    for g in range(0, len(data), bits):
        acc = int.from_bytes(data[g:g + bits], "little")
        out.extend((acc >> (t * bits)) & mask for t in range(8))
    return out[:n]


def build_payload(mask, values, bits: int, codec: int) -> tuple[bytes, int]:
    """Build a FeatureFrame payload from an optional per-cell 0/1 mask and the values in payload
    order. Returns (payload, raw_length). Codec 1 is honoured even if LZ4 does not help."""
    raw = (pack_values(mask, 1) if mask is not None else b"") + pack_values(values, bits)
    if codec == 0:
        return raw, len(raw)
    if codec == 1:
        import lz4.block
        return lz4.block.compress(raw, store_size=False), len(raw)
    raise ValueError("codec must be 0 or 1")


def decode_payload(frame: FeatureFrame) -> tuple[list[int] | None, list[int]]:
    """Undo the codec and unpack: returns (mask or None, values in payload order)."""
    if frame.codec == 0:
        if frame.raw_length != len(frame.payload):
            raise WireError("payload_size_mismatch", "raw_length != payload length with codec 0")
        raw = frame.payload
    else:
        import lz4.block
        try:
            raw = lz4.block.decompress(frame.payload, uncompressed_size=frame.raw_length)
        except Exception as exc:  # malformed, or would write past raw_length
            raise WireError("codec_error", str(exc)) from None
        if len(raw) != frame.raw_length:
            raise WireError("codec_error", f"LZ4 block decodes to {len(raw)} bytes")
    cells = frame.height * frame.width
    if frame.mask_mode == 1:
        m = packed_size(cells, 1)
        if len(raw) < m:
            raise WireError("payload_size_mismatch", "raw shorter than the mask")
        mask = unpack_values(raw[:m], 1, cells)
        sent = sum(mask)
    else:
        m, mask, sent = 0, None, cells
    n = frame.channels * sent
    if frame.raw_length != m + packed_size(n, frame.bits):
        raise WireError("payload_size_mismatch", f"raw_length {frame.raw_length} for {n} values")
    return mask, unpack_values(raw[m:], frame.bits, n)


# ---------------------------------------------------------------------------------------------
# Encoding.


def _str(s: str) -> bytes:
    b = s.encode()
    return bytes([len(b)]) + b


def frame_message(kind: int, body: bytes, payload: bytes = b"", *, magic: bytes = MAGIC,
                  version: int = VERSION, flags: int = 0) -> bytes:
    """Wrap a body and payload in the envelope and append the CRC (also for crafting vectors)."""
    head = HEADER.pack(magic, version, kind, flags, len(body), len(payload))
    data = head + body + payload
    return data + struct.pack("<I", crc32c(data))


def encode_body(msg: Message) -> tuple[bytes, bytes]:
    """Canonical v1 (body, payload) of a message."""
    if isinstance(msg, Hello):
        body = (_str(msg.agent_id) + _str(msg.model_id) + bytes(msg.model_hash)
                + struct.pack("<BB", msg.sensor_kind, len(msg.widths))
                + struct.pack(f"<{len(msg.widths)}H", *msg.widths) + bytes([msg.bits_mask]))
        return body, b""
    if isinstance(msg, FeatureFrame):
        body = (_str(msg.agent_id) + struct.pack("<QQ3d4d", msg.sequence, msg.capture_time_ns,
                                                 *msg.position, *msg.orientation)
                + _str(msg.model_id)
                + struct.pack("<BBHHHB", msg.width_index, msg.bits, msg.channels, msg.height,
                              msg.width, msg.quant_mode))
        if msg.quant_mode == 0:
            body += struct.pack(f"<{msg.channels}f", *msg.scales) + bytes(msg.zero_points)
        body += struct.pack("<BBI", msg.mask_mode, msg.codec, msg.raw_length)
        return body, bytes(msg.payload)
    if isinstance(msg, Ack):
        return struct.pack("<QQII", msg.sequence, msg.receive_time_ns, msg.bytes_received,
                           msg.queue_delay_ns), b""
    if isinstance(msg, Result):
        body = struct.pack("<QQQHH", msg.sequence, msg.capture_time_ns, msg.fusion_time_ns,
                           len(msg.detections), RECORD_SIZE)
        return body, _records(msg.detections)
    if isinstance(msg, Boxes):
        body = (_str(msg.agent_id) + struct.pack("<QQ3d4dHH", msg.sequence, msg.capture_time_ns,
                                                 *msg.position, *msg.orientation,
                                                 len(msg.detections), RECORD_SIZE))
        return body, _records(msg.detections)
    if isinstance(msg, Control):
        return struct.pack("<IBBfB", msg.epoch, msg.max_width_index, msg.max_bits,
                           msg.max_rate_hz, msg.reason), b""
    if isinstance(msg, Handover):
        endpoint = msg.endpoint.encode("ascii")
        return (struct.pack("<IB", msg.epoch, msg.action) + _str(msg.region)
                + bytes([len(endpoint)]) + endpoint + bytes(msg.server_key)), b""
    raise TypeError(f"not a SlimSplit message: {msg!r}")


def _records(detections: list[Detection]) -> bytes:
    return b"".join(struct.pack("<HHf3f3ffI", d.class_id, 0, d.score, *d.center, *d.size,
                                d.yaw, d.track_id) for d in detections)


def encode(msg: Message) -> bytes:
    """Canonical v1 bytes of `msg` (unknown trailing fields are not written)."""
    body, payload = encode_body(msg)
    return frame_message(msg.kind, body, payload)


# ---------------------------------------------------------------------------------------------
# Decoding.


class _Body:
    """Sequential reader over a body; running out of bytes is `body_truncated`."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise WireError("body_truncated", f"need {n} bytes at body offset {self.pos}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str):
        s = struct.Struct("<" + fmt)
        return s.unpack(self.take(s.size))

    def one(self, fmt: str):
        return self.unpack(fmt)[0]

    def ident(self, name: str) -> str:
        raw = self.take(self.one("B"))
        if not _IDENT.fullmatch(raw):
            raise WireError("field_out_of_range", f"{name} is not an identifier")
        return raw.decode("ascii")

    def rest(self) -> bytes:
        return self.data[self.pos:]


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise WireError("field_out_of_range", what)


def _finite(*xs: float) -> bool:
    return all(math.isfinite(x) for x in xs)


def _empty_payload(payload: bytes, kind: str) -> None:
    _check(not payload, f"{kind} payload must be empty")


def _decode_hello(b: _Body, payload: bytes, limits: Limits) -> Hello:
    agent_id = b.ident("agent_id")
    model_id = b.ident("model_id")
    model_hash = b.take(32)
    sensor_kind = b.one("B")
    _check(sensor_kind <= 3, "sensor_kind > 3")
    count = b.one("B")
    _check(1 <= count <= 16, "width_count outside 1..16")
    widths = list(b.unpack(f"{count}H"))
    _check(all(1 <= w <= 1000 for w in widths), "width outside 1..1000")
    _check(all(x < y for x, y in zip(widths, widths[1:])), "widths not strictly increasing")
    bits_mask = b.one("B")
    _check(bits_mask != 0, "bits_mask is 0")
    _empty_payload(payload, "Hello")
    return Hello(agent_id, model_id, model_hash, sensor_kind, widths, bits_mask, b.rest())


def _pose(b: _Body):
    position = b.unpack("3d")
    _check(_finite(*position), "position not finite")
    orientation = b.unpack("4d")
    _check(_finite(*orientation), "orientation not finite")
    _check(abs(math.sqrt(sum(q * q for q in orientation)) - 1.0) <= 1e-3, "|q| not within 1±1e-3")
    return position, orientation


def _decode_frame(b: _Body, payload: bytes, limits: Limits) -> FeatureFrame:
    agent_id = b.ident("agent_id")
    sequence, capture_time_ns = b.unpack("QQ")
    position, orientation = _pose(b)
    model_id = b.ident("model_id")
    width_index, bits = b.unpack("BB")
    _check(1 <= bits <= 8, "bits outside 1..8")
    dims = b.unpack("HHH")
    for name, value, limit in zip(("channels", "height", "width"), dims,
                                  (limits.max_channels, limits.max_height, limits.max_width)):
        _check(value >= 1, f"{name} is 0")
        if value > limit:
            raise WireError("over_limit", f"{name} {value} > {limit}")
    channels, height, width = dims
    if channels * height * width > limits.max_values:
        raise WireError("over_limit", f"C·H·W > {limits.max_values}")
    quant_mode = b.one("B")
    _check(quant_mode in (0, 1, 2), "quant_mode not in 0...2")
    scales = zero_points = None
    if quant_mode == 0:
        scales = list(b.unpack(f"{channels}f"))
        _check(all(math.isfinite(s) and s > 0 for s in scales), "scale not finite and > 0")
        zero_points = list(b.take(channels))
        _check(all(z < (1 << bits) for z in zero_points), "zero point >= 2^bits")
    mask_mode, codec, raw_length = b.unpack("BBI")
    _check(mask_mode in (0, 1), "mask_mode not 0/1")
    _check(codec in (0, 1), "codec not 0/1")
    m = packed_size(height * width, 1) if mask_mode else 0
    if raw_length > m + packed_size(channels * height * width, bits):
        raise WireError("payload_size_mismatch", "raw_length above its bound")
    frame = FeatureFrame(agent_id, sequence, capture_time_ns, position, orientation, model_id,
                         width_index, bits, channels, height, width, quant_mode, scales,
                         zero_points, mask_mode, codec, raw_length, payload, b.rest())
    decode_payload(frame)  # codec, mask padding and size rules
    return frame


def _decode_ack(b: _Body, payload: bytes, limits: Limits) -> Ack:
    msg = Ack(*b.unpack("QQII"), trailing=b.rest())
    _empty_payload(payload, "Ack")
    return msg


def _detections(count: int, record_size: int, payload: bytes) -> list[Detection]:
    _check(count <= MAX_DETECTIONS, "detection_count > 4096")
    _check(record_size >= RECORD_SIZE, "record_size < 40")
    if len(payload) != count * record_size:
        raise WireError("payload_size_mismatch", "payload != detection_count × record_size")
    detections = []
    for i in range(count):
        rec = payload[i * record_size:(i + 1) * record_size]
        class_id, _reserved, score, cx, cy, cz, sl, sw, sh, yaw, track_id = \
            struct.unpack_from("<HHf3f3ffI", rec)
        _check(_finite(score, cx, cy, cz, sl, sw, sh, yaw), "detection float not finite")
        _check(0.0 <= score <= 1.0, "score outside 0..1")
        _check(sl > 0 and sw > 0 and sh > 0, "size not > 0")
        detections.append(Detection(class_id, score, (cx, cy, cz), (sl, sw, sh), yaw, track_id,
                                    rec[RECORD_SIZE:]))
    return detections


def _decode_result(b: _Body, payload: bytes, limits: Limits) -> Result:
    sequence, capture_time_ns, fusion_time_ns, count, record_size = b.unpack("QQQHH")
    detections = _detections(count, record_size, payload)
    return Result(sequence, capture_time_ns, fusion_time_ns, detections, record_size, b.rest())


def _decode_boxes(b: _Body, payload: bytes, limits: Limits) -> Boxes:
    agent_id = b.ident("agent_id")
    sequence, capture_time_ns = b.unpack("QQ")
    position, orientation = _pose(b)
    count, record_size = b.unpack("HH")
    detections = _detections(count, record_size, payload)
    return Boxes(agent_id, sequence, capture_time_ns, position, orientation, detections,
                 record_size, b.rest())


def _decode_control(b: _Body, payload: bytes, limits: Limits) -> Control:
    epoch, max_width_index, max_bits, max_rate_hz, reason = b.unpack("IBBfB")
    _check(1 <= max_bits <= 8, "max_bits outside 1..8")
    _check(math.isfinite(max_rate_hz) and max_rate_hz >= 0, "max_rate_hz not finite and >= 0")
    _empty_payload(payload, "Control")
    return Control(epoch, max_width_index, max_bits, max_rate_hz, reason, b.rest())


_ENDPOINT = re.compile(rb"(tcp|ipc)://[\x21-\x7e]+")


def _decode_handover(b: _Body, payload: bytes, limits: Limits) -> Handover:
    epoch, action = b.unpack("IB")
    _check(action <= 3, "action > 3")
    region = b.ident("region")
    endpoint = b.take(b.one("B"))
    _check(7 <= len(endpoint) and _ENDPOINT.fullmatch(endpoint) is not None,
           "endpoint is not 7-255 printable bytes starting tcp:// or ipc://")
    server_key = b.take(32)
    _empty_payload(payload, "Handover")
    return Handover(epoch, action, region, endpoint.decode("ascii"), server_key, b.rest())


_DECODERS = {KIND_HELLO: _decode_hello, KIND_FEATURE_FRAME: _decode_frame, KIND_ACK: _decode_ack,
             KIND_RESULT: _decode_result, KIND_CONTROL: _decode_control,
             KIND_HANDOVER: _decode_handover, KIND_BOXES: _decode_boxes}


def decode(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Message:
    """Decode one message, checking the §3 envelope rules in order, then the kind's rules."""
    data = bytes(data)
    if len(data) < 20:
        raise WireError("truncated", f"{len(data)} bytes")
    magic, version, kind, _flags, body_length, payload_length = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise WireError("bad_magic")
    if version != VERSION:
        raise WireError("unsupported_version", f"version {version}")
    total = 20 + body_length + payload_length
    if body_length > MAX_BODY_LENGTH or total > limits.max_message_length:
        raise WireError("over_limit", f"body {body_length}, message {total}")
    if total != len(data):
        raise WireError("length_mismatch", f"header says {total}, message has {len(data)}")
    (crc,) = struct.unpack_from("<I", data, total - 4)
    if crc != crc32c(data[:total - 4]):
        raise WireError("crc_mismatch")
    if kind not in _DECODERS:
        raise WireError("unknown_kind", f"kind {kind}")
    body = data[HEADER_SIZE:HEADER_SIZE + body_length]
    payload = data[HEADER_SIZE + body_length:total - 4]
    return _DECODERS[kind](_Body(body), payload, limits)


# ---------------------------------------------------------------------------------------------
# JSON form used by the test vectors (§9).

_JSON_FIELDS = {
    Hello: ("agent_id", "model_id", "model_hash", "sensor_kind", "widths", "bits_mask"),
    FeatureFrame: ("agent_id", "sequence", "capture_time_ns", "position", "orientation",
                   "model_id", "width_index", "bits", "channels", "height", "width",
                   "quant_mode", "scales", "zero_points", "mask_mode", "codec", "raw_length"),
    Ack: ("sequence", "receive_time_ns", "bytes_received", "queue_delay_ns"),
    Result: ("sequence", "capture_time_ns", "fusion_time_ns", "record_size", "detections"),
    Control: ("epoch", "max_width_index", "max_bits", "max_rate_hz", "reason"),
    Handover: ("epoch", "action", "region", "endpoint", "server_key"),
    Boxes: ("agent_id", "sequence", "capture_time_ns", "position", "orientation", "record_size",
            "detections"),
}
_CLASSES = {cls.__name__: cls for cls in _JSON_FIELDS}
_DETECTION_FIELDS = ("class_id", "score", "center", "size", "yaw", "track_id")


def _jsonable(value):
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Detection):
        return {k: _jsonable(getattr(value, k)) for k in _DETECTION_FIELDS}
    return value


def to_json(msg: Message) -> dict:
    """{"kind", "fields"[, "mask", "values"]} as in the vector JSON files."""
    doc = {"kind": type(msg).__name__,
           "fields": {k: _jsonable(getattr(msg, k)) for k in _JSON_FIELDS[type(msg)]}}
    if isinstance(msg, FeatureFrame):
        doc["mask"], doc["values"] = decode_payload(msg)
    return doc


def from_json(doc: dict) -> Message:
    """Build a message from a vector JSON document (a frame's payload from mask and values)."""
    cls = _CLASSES[doc["kind"]]
    f = dict(doc["fields"])
    if cls is Hello:
        f["model_hash"] = bytes.fromhex(f["model_hash"])
    elif cls is Handover:
        f["server_key"] = bytes.fromhex(f["server_key"])
    elif cls is FeatureFrame:
        f["position"], f["orientation"] = tuple(f["position"]), tuple(f["orientation"])
        f["payload"], raw_length = build_payload(doc["mask"], doc["values"], f["bits"], f["codec"])
        assert raw_length == f["raw_length"], "raw_length does not match mask and values"
    if cls in (Result, Boxes):
        f["detections"] = [Detection(d["class_id"], d["score"], tuple(d["center"]),
                                     tuple(d["size"]), d["yaw"], d["track_id"])
                           for d in f["detections"]]
    if cls is Boxes:
        f["position"], f["orientation"] = tuple(f["position"]), tuple(f["orientation"])
    return cls(**f)


# ---------------------------------------------------------------------------------------------
# Key files (§8): Z85 text, 40 characters and a newline.


def read_key(path) -> bytes:
    """Read a Z85 key file (NAME.pub or NAME.key) and return the 40 Z85 characters as bytes."""
    text = Path(path).read_text(encoding="ascii").strip()
    if len(text) != 40:
        raise ValueError(f"{path}: expected a 40-character Z85 key, got {len(text)} characters")
    return text.encode("ascii")


def write_keypair(directory, name: str, public: bytes, secret: bytes) -> None:
    """Write DIR/NAME.pub and DIR/NAME.key (mode 0600) as §8 describes."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}.pub").write_text(public.decode("ascii") + "\n")
    fd = os.open(d / f"{name}.key", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret.decode("ascii") + "\n")
