#!/usr/bin/env python3
"""Generate the MCAP interop fixtures in Tests/Fixtures/mcap (deterministic).

Every file is written with the official Python MCAP libraries (``mcap`` and
``mcap_ros2``) so that the Swift reader/writer can be checked against an
independent implementation. Run from anywhere:

    .venv/bin/python Tests/interop/make_mcap_fixtures.py [--out DIR] [--no-verify]

The output is byte-for-byte reproducible for the package versions pinned in
Tests/interop/requirements.txt (the MCAP Header record carries the library
versions, and LZ4/zstd output depends on the codec version). After writing,
the script reads every file back with ``mcap.reader`` + ``mcap_ros2.decoder``
and checks it against the JSON expectations it wrote (``--no-verify`` skips
that).

See Tests/interop/README.md for what each fixture is and the JSON schemas.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import struct
import sys
import zlib
from typing import Any, Dict, List, Optional, Sequence, Tuple

import lz4.frame
from mcap.reader import NonSeekingReader, make_reader
from mcap.stream_reader import breakup_chunk
from mcap.records import Chunk, Message
from mcap.data_stream import ReadDataStream
from mcap.well_known import MessageEncoding, SchemaEncoding
from mcap.writer import CompressionType
from mcap.writer import Writer as McapWriter
from mcap_ros2 import __version__ as MCAP_ROS2_VERSION
from mcap_ros2._dynamic import serialize_dynamic
from mcap_ros2.decoder import DecoderFactory
from mcap_ros2.writer import Writer as Ros2Writer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import msg_definitions as defs  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.normpath(os.path.join(HERE, "..", "Fixtures", "mcap"))

NS = 1_000_000_000
MAX_FIXTURE_BYTES = 50 * 1024

PC2 = defs.POINT_CLOUD2
POSE = defs.POSE_STAMPED
DET = defs.DETECTION3D_ARRAY

# sensor_msgs/PointField datatypes
INT8, UINT8, INT16, UINT16, INT32, UINT32, FLOAT32, FLOAT64 = range(1, 9)
DT_FORMAT = {INT8: "b", UINT8: "B", INT16: "h", UINT16: "H",
             INT32: "i", UINT32: "I", FLOAT32: "f", FLOAT64: "d"}
DT_SIZE = {k: struct.calcsize(v) for k, v in DT_FORMAT.items()}

# The five reference points (x, y, z, intensity). Every value is exactly
# representable as float32, so float32 and float64 layouts decode to the same
# numbers and the JSON expectations can be compared with ==.
POINTS: List[Tuple[float, float, float, float]] = [
    (1.0, 2.0, 3.0, 10.0),
    (-1.5, 0.25, 0.5, 20.0),
    (4.0, -2.0, 1.25, 30.0),
    (0.0, 0.0, -0.75, 40.0),
    (10.5, 5.25, 2.0, 50.0),
]
NAN_POINT = (float("nan"), 1.0, 1.0, 99.0)
INF_POINT = (2.0, 2.0, float("inf"), 98.0)
PAD_BYTE = 0xEE


# --------------------------------------------------------------------------
# helpers: times, headers, JSON entries


def stamp(sec: int, nanosec: int) -> Dict[str, int]:
    return {"sec": sec, "nanosec": nanosec}


def stamp_ns(st: Dict[str, int]) -> int:
    return st["sec"] * NS + st["nanosec"]


def header(st: Dict[str, int], frame_id: str) -> Dict[str, Any]:
    return {"stamp": dict(st), "frame_id": frame_id}


def field(name: str, offset: int, datatype: int, count: int = 1) -> Dict[str, Any]:
    return {"name": name, "offset": offset, "datatype": datatype, "count": count}


# --------------------------------------------------------------------------
# PointCloud2 construction and an independent reference decoder


def build_cloud(
    points: Sequence[Tuple[float, ...]],
    fields: List[Dict[str, Any]],
    point_step: int,
    *,
    height: int = 1,
    width: Optional[int] = None,
    row_step: Optional[int] = None,
    big_endian: bool = False,
    is_dense: bool = True,
    extra_values=None,
) -> Dict[str, Any]:
    """Pack ``points`` (tuples x, y, z, intensity) into a PointCloud2 body.

    ``extra_values(i, name)`` supplies values for fields other than x, y, z,
    intensity. Unused bytes (padding inside a point and at the end of a row)
    are filled with PAD_BYTE so a reader that ignores offsets reads garbage.
    """
    if width is None:
        width = len(points) // height
    assert width * height == len(points)
    if row_step is None:
        row_step = width * point_step
    endian = ">" if big_endian else "<"
    data = bytearray([PAD_BYTE]) * (row_step * height)
    index_of = {"x": 0, "y": 1, "z": 2, "intensity": 3}
    for i, p in enumerate(points):
        row, col = divmod(i, width)
        base = row * row_step + col * point_step
        for f in fields:
            fmt = endian + DT_FORMAT[f["datatype"]]
            if f["name"] in index_of:
                value = p[index_of[f["name"]]]
            else:
                value = extra_values(i, f["name"])
            struct.pack_into(fmt, data, base + f["offset"], value)
    return {
        "height": height,
        "width": width,
        "fields": fields,
        "is_bigendian": big_endian,
        "point_step": point_step,
        "row_step": row_step,
        "data": bytes(data),
        "is_dense": is_dense,
    }


def decode_points(cloud: Any) -> List[List[Optional[float]]]:
    """Reference PointCloud2 reader: finite points as [x, y, z, intensity|None].

    Works on decoded messages (attribute access) and on plain dicts. Points
    whose x, y or z is NaN or infinite are dropped, row padding is skipped,
    and intensity of any numeric datatype is returned as a float.
    """

    def get(obj, name):
        return obj[name] if isinstance(obj, dict) else getattr(obj, name)

    fields = {get(f, "name"): (get(f, "offset"), get(f, "datatype")) for f in get(cloud, "fields")}
    endian = ">" if get(cloud, "is_bigendian") else "<"
    data = bytes(get(cloud, "data"))
    height, width = get(cloud, "height"), get(cloud, "width")
    point_step, row_step = get(cloud, "point_step"), get(cloud, "row_step")
    out: List[List[Optional[float]]] = []
    for row in range(height):
        for col in range(width):
            base = row * row_step + col * point_step

            def read(name):
                off, dt = fields[name]
                return struct.unpack_from(endian + DT_FORMAT[dt], data, base + off)[0]

            x, y, z = read("x"), read("y"), read("z")
            if not all(math.isfinite(v) for v in (x, y, z)):
                continue
            intensity = float(read("intensity")) if "intensity" in fields else None
            out.append([float(x), float(y), float(z), intensity])
    return out


def expected_points(points, has_intensity=True) -> List[List[Optional[float]]]:
    out = []
    for x, y, z, i in points:
        if not all(math.isfinite(v) for v in (x, y, z)):
            continue
        out.append([x, y, z, i if has_intensity else None])
    return out


def cloud_entry(cloud: Dict[str, Any], points: List[List[Optional[float]]]) -> Dict[str, Any]:
    return {
        "height": cloud["height"],
        "width": cloud["width"],
        "fields": cloud["fields"],
        "is_bigendian": cloud["is_bigendian"],
        "point_step": cloud["point_step"],
        "row_step": cloud["row_step"],
        "is_dense": cloud["is_dense"],
        "data_length": len(cloud["data"]),
        "points": points,
    }


def xyzi_cloud(points) -> Dict[str, Any]:
    return build_cloud(
        points,
        [field("x", 0, FLOAT32), field("y", 4, FLOAT32), field("z", 8, FLOAT32),
         field("intensity", 12, FLOAT32)],
        16,
    )


# --------------------------------------------------------------------------
# message entries (the ROS message dict plus its JSON expectation)


class Msg:
    """One message to write: topic, schema, times, ROS dict, JSON expectation."""

    def __init__(self, topic: str, schema: str, log_time: int, ros: Dict[str, Any],
                 expect: Dict[str, Any], sequence: int = 0):
        self.topic = topic
        self.schema = schema
        self.log_time = log_time
        self.publish_time = log_time
        self.sequence = sequence
        self.ros = ros
        self.expect = {
            "topic": topic,
            "schema_name": schema,
            "type": schema.split("/")[-1],
            "log_time_ns": log_time,
            "publish_time_ns": log_time,
            "sequence": sequence,
            **expect,
        }


def pc2_msg(topic: str, st: Dict[str, int], frame_id: str, cloud: Dict[str, Any],
            points: List[List[Optional[float]]], sequence: int = 0,
            log_time: Optional[int] = None, extra: Optional[Dict[str, Any]] = None) -> Msg:
    ros = {"header": header(st, frame_id), **cloud}
    expect = dict(extra or {})
    expect["header"] = header(st, frame_id)
    expect["cloud"] = cloud_entry(cloud, points)
    return Msg(topic, PC2, stamp_ns(st) if log_time is None else log_time, ros, expect, sequence)


def pose_dict(position, orientation) -> Dict[str, Any]:
    return {
        "position": dict(zip("xyz", position)),
        "orientation": dict(zip("xyzw", orientation)),
    }


def pose_msg(topic: str, st: Dict[str, int], frame_id: str, position, orientation,
             sequence: int = 0, log_time: Optional[int] = None) -> Msg:
    pose = pose_dict(position, orientation)
    ros = {"header": header(st, frame_id), "pose": pose}
    expect = {"header": header(st, frame_id), "pose": pose}
    return Msg(topic, POSE, stamp_ns(st) if log_time is None else log_time, ros, expect, sequence)


def detection(st, frame_id, det_id, center, orientation, size, results) -> Dict[str, Any]:
    return {
        "header": header(st, frame_id),
        "results": [
            {
                "hypothesis": {"class_id": class_id, "score": score},
                "pose": {"pose": pose_dict(pos, ori), "covariance": list(cov)},
            }
            for class_id, score, pos, ori, cov in results
        ],
        "bbox": {"center": pose_dict(center, orientation), "size": dict(zip("xyz", size))},
        "id": det_id,
    }


def det_msg(topic: str, st: Dict[str, int], frame_id: str, detections: List[Dict[str, Any]],
            sequence: int = 0, log_time: Optional[int] = None) -> Msg:
    ros = {"header": header(st, frame_id), "detections": detections}
    expect = {"header": header(st, frame_id), "detections": detections}
    return Msg(topic, DET, stamp_ns(st) if log_time is None else log_time, ros, expect, sequence)


# --------------------------------------------------------------------------
# writers


def write_ros2(path: str, msgs: List[Msg], compression: Optional[CompressionType],
               chunk_size: Optional[int] = 1024 * 1024) -> None:
    """Chunked file through mcap_ros2.writer.Writer (profile ros2); a setting given as None is
    left at the writer's default."""
    options = {k: v for k, v in (("compression", compression), ("chunk_size", chunk_size)) if v is not None}
    with open(path, "wb") as f:
        writer = Ros2Writer(f, **options)
        schemas = {}
        for m in msgs:
            if m.schema not in schemas:
                schemas[m.schema] = writer.register_msgdef(m.schema, defs.DEFINITIONS[m.schema])
            writer.write_message(m.topic, schemas[m.schema], m.ros, log_time=m.log_time,
                                 publish_time=m.publish_time, sequence=m.sequence)
        writer.finish()


def write_raw(output, msgs: List[Msg], **writer_options) -> None:
    """Any file layout through mcap.writer.Writer (``writer_options`` go to its
    constructor, e.g. use_chunking, compression, chunk_size, use_statistics),
    with CDR produced by the same encoder mcap_ros2's writer uses
    (mcap_ros2._dynamic.serialize_dynamic) and the same Header record."""
    library = f"mcap-python/{_mcap_version()} mcap-ros2-support/{MCAP_ROS2_VERSION}"
    writer = McapWriter(output, **writer_options)
    writer.start(profile="ros2", library=library)
    schema_ids: Dict[str, int] = {}
    encoders = {}
    channel_ids: Dict[str, int] = {}
    for m in msgs:
        if m.schema not in schema_ids:
            text = defs.DEFINITIONS[m.schema]
            schema_ids[m.schema] = writer.register_schema(
                m.schema, SchemaEncoding.ROS2, text.encode("utf-8"))
            encoders[m.schema] = serialize_dynamic(m.schema, text)[m.schema]
        if m.topic not in channel_ids:
            channel_ids[m.topic] = writer.register_channel(
                m.topic, MessageEncoding.CDR, schema_ids[m.schema])
        writer.add_message(channel_ids[m.topic], log_time=m.log_time,
                           data=encoders[m.schema](m.ros),
                           publish_time=m.publish_time, sequence=m.sequence)
    writer.finish()


def write_unchunked(path: str, msgs: List[Msg]) -> None:
    """Unchunked file: mcap.writer.Writer(use_chunking=False). Schema and Channel
    records sit directly in the data section; no chunk or message indexes are
    written, but the summary (schemas, channels, statistics, summary offsets) is."""
    with open(path, "wb") as f:
        write_raw(f, msgs, use_chunking=False, compression=CompressionType.NONE)


def _mcap_version() -> str:
    from mcap.writer import __version__ as v
    return v


def dump_json(path: str, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, allow_nan=False)
        f.write("\n")


# --------------------------------------------------------------------------
# fixture builders


def pc2_layout_messages() -> List[Tuple[str, str, Msg]]:
    topic, frame = "/agents/a/lidar", "agent_a/lidar"
    f32 = FLOAT32
    out: List[Tuple[str, str, Dict[str, Any], List]] = []

    out.append(("xyzi_f32", "x,y,z,intensity float32 in order, point_step 16",
                xyzi_cloud(POINTS), expected_points(POINTS)))

    out.append(("shuffled_fields",
                "fields listed intensity,z,y,x with shuffled offsets (z@0 x@4 intensity@8 y@12)",
                build_cloud(POINTS, [field("intensity", 8, f32), field("z", 0, f32),
                                     field("y", 12, f32), field("x", 4, f32)], 16),
                expected_points(POINTS)))

    out.append(("padded_step32",
                "point_step 32, x@4 y@12 z@20 intensity@24, 0xEE padding between fields and at the end",
                build_cloud(POINTS, [field("x", 4, f32), field("y", 12, f32), field("z", 20, f32),
                                     field("intensity", 24, f32)], 32),
                expected_points(POINTS)))

    out.append(("xyz_f64",
                "x,y,z float64 (datatype 8) at 0/8/16, intensity float32 at 24, point_step 28 "
                "(float64 reads are unaligned for odd points)",
                build_cloud(POINTS, [field("x", 0, FLOAT64), field("y", 8, FLOAT64),
                                     field("z", 16, FLOAT64), field("intensity", 24, f32)], 28),
                expected_points(POINTS)))

    out.append(("no_intensity", "x,y,z float32 only, point_step 12; intensity expected null",
                build_cloud(POINTS, [field("x", 0, f32), field("y", 4, f32), field("z", 8, f32)], 12),
                expected_points(POINTS, has_intensity=False)))

    out.append(("big_endian", "is_bigendian true, big-endian float32 x,y,z,intensity, point_step 16",
                build_cloud(POINTS, [field("x", 0, f32), field("y", 4, f32), field("z", 8, f32),
                                     field("intensity", 12, f32)], 16, big_endian=True),
                expected_points(POINTS)))

    dense_pts = [POINTS[0], NAN_POINT, POINTS[1], POINTS[2], POINTS[3], INF_POINT, POINTS[4]]
    out.append(("not_dense_nan",
                "is_dense false, width 7: NaN x at index 1 and +inf z at index 5 must be dropped",
                build_cloud(dense_pts, [field("x", 0, f32), field("y", 4, f32), field("z", 8, f32),
                                        field("intensity", 12, f32)], 16, is_dense=False),
                expected_points(dense_pts)))

    org_pts = list(POINTS[:3]) + [POINTS[3], (float("nan"),) * 3 + (0.0,), POINTS[4]]
    out.append(("organized_2d_row_padding",
                "height 2 width 3, point_step 16, row_step 56 (8 padding bytes per row); "
                "the all-NaN point at row 1 col 1 is dropped (is_dense false)",
                build_cloud(org_pts, [field("x", 0, f32), field("y", 4, f32), field("z", 8, f32),
                                      field("intensity", 12, f32)], 16,
                            height=2, width=3, row_step=56, is_dense=False),
                expected_points(org_pts)))

    out.append(("extra_fields",
                "x@0 f32, ring@4 uint16 (+2 pad), y@8 f32, time@12 f32, z@16 f32, intensity@20 f32, "
                "point_step 24",
                build_cloud(POINTS, [field("x", 0, f32), field("ring", 4, UINT16), field("y", 8, f32),
                                     field("time", 12, f32), field("z", 16, f32),
                                     field("intensity", 20, f32)], 24,
                            extra_values=lambda i, name: i + 3 if name == "ring" else i * 0.125),
                expected_points(POINTS)))

    msgs = []
    for idx, (name, desc, cloud, pts) in enumerate(out):
        st = stamp(1000 + idx, 250_000_000)
        msgs.append((name, desc, pc2_msg(topic, st, frame, cloud, pts, sequence=idx)))
    return msgs


def make_pc2_layouts(out_dir: str) -> None:
    entries = pc2_layout_messages()
    msgs = [m for _, _, m in entries]
    write_ros2(os.path.join(out_dir, "pc2_layouts.mcap"), msgs, CompressionType.LZ4)
    messages = []
    for idx, (name, desc, m) in enumerate(entries):
        e = {"index": idx, "layout": name, "description": desc, **m.expect}
        messages.append(e)
    dump_json(os.path.join(out_dir, "pc2_layouts.json"), {
        "file": "pc2_layouts.mcap",
        "chunked": True,
        "compression": "lz4",
        "expect_error": None,
        "messages_before_error": len(msgs),
        **summary_entry(msgs),
        "messages": messages,
    })


def small_clouds_and_poses(base_sec: int, topic_prefix: str = "/agents/a") -> List[Msg]:
    """3 PointCloud2 + 2 PoseStamped interleaved, 50 ms apart."""
    msgs: List[Msg] = []
    n = 0
    for k in range(5):
        st = stamp(base_sec, k * 50_000_000)
        if k % 2 == 0:
            shift = float(k // 2)
            pts = [(x + shift, y, z, i + shift) for x, y, z, i in POINTS]
            cloud = xyzi_cloud(pts)
            msgs.append(pc2_msg(f"{topic_prefix}/lidar", st, "agent_a/lidar", cloud,
                                expected_points(pts), sequence=k // 2))
        else:
            orientation = (0.0, 0.0, 0.6, 0.8) if k == 1 else (0.0, 0.0, 0.0, 1.0)
            msgs.append(pose_msg(f"{topic_prefix}/pose", st, "map",
                                 (1.5 * k, -0.5 * k, 0.25), orientation, sequence=k // 2))
        n += 1
    return msgs


def summary_entry(msgs: List[Msg]) -> Dict[str, Any]:
    counts: Dict[str, int] = {}
    for m in msgs:
        counts[m.topic] = counts.get(m.topic, 0) + 1
    return {
        "message_count": len(msgs),
        "topic_message_counts": counts,
        "message_start_time_ns": min(m.log_time for m in msgs),
        "message_end_time_ns": max(m.log_time for m in msgs),
    }


def make_unchunked(out_dir: str) -> None:
    msgs = small_clouds_and_poses(2000)
    write_unchunked(os.path.join(out_dir, "unchunked.mcap"), msgs)
    dump_json(os.path.join(out_dir, "unchunked.json"), {
        "file": "unchunked.mcap",
        "chunked": False,
        "compression": None,
        "expect_error": None,
        "messages_before_error": len(msgs),
        **summary_entry(msgs),
        "messages": [m.expect for m in msgs],
    })


def make_compression_variants(out_dir: str) -> None:
    for name, comp, comp_str, err in (
        ("uncompressed_chunks", CompressionType.NONE, "", None),
        ("zstd_chunks", CompressionType.ZSTD, "zstd", None),
    ):
        msgs = small_clouds_and_poses(2100 if comp == CompressionType.NONE else 2200)[:3]
        write_ros2(os.path.join(out_dir, f"{name}.mcap"), msgs, comp)
        dump_json(os.path.join(out_dir, f"{name}.json"), {
            "file": f"{name}.mcap",
            "chunked": True,
            "compression": comp_str,
            "expect_error": err,
            "messages_before_error": 0 if err else len(msgs),
            **summary_entry(msgs),
            "messages": [m.expect for m in msgs],
        })


def make_writer_defaults(out_dir: str) -> None:
    """PointCloud2 and PoseStamped through mcap_ros2.writer.Writer with every setting left at its
    default (zstd chunks, the default chunk size): what a user's own recording script writes."""
    msgs = small_clouds_and_poses(2300)
    write_ros2(os.path.join(out_dir, "writer_defaults.mcap"), msgs, None, None)
    dump_json(os.path.join(out_dir, "writer_defaults.json"), {
        "file": "writer_defaults.mcap",
        "chunked": True,
        "compression": "zstd",
        "expect_error": None,
        "messages_before_error": len(msgs),
        **summary_entry(msgs),
        "messages": [m.expect for m in msgs],
    })


def valid_small_messages() -> List[Msg]:
    msgs = []
    for i in range(30):
        st = stamp(3000 + i // 10, (i % 10) * 100_000_000)
        orientation = (0.0, 0.0, 0.0, 1.0) if i % 2 == 0 else (0.0, 0.0, 0.6, 0.8)
        msgs.append(pose_msg("/agents/a/pose", st, "map", (0.5 * i, -0.25 * i, 1.0),
                             orientation, sequence=i))
    return msgs


def chunk_layout(data: bytes) -> List[Dict[str, Any]]:
    """Chunk offsets/lengths and per-chunk message counts from the summary."""
    reader = make_reader(io.BytesIO(data))
    summary = reader.get_summary()
    chunks = []
    first = 0
    for ci in summary.chunk_indexes:
        stream = ReadDataStream(io.BytesIO(data[ci.chunk_start_offset + 9:
                                                ci.chunk_start_offset + ci.chunk_length]))
        chunk = Chunk.read(stream)
        count = sum(isinstance(r, Message) for r in breakup_chunk(chunk, validate_crc=True))
        comp_len = len(chunk.compression)
        records_offset = ci.chunk_start_offset + 1 + 8 + 8 + 8 + 8 + 4 + 4 + comp_len + 8
        chunks.append({
            "offset": ci.chunk_start_offset,
            "length": ci.chunk_length,
            "records_offset": records_offset,
            "compressed_size": ci.compressed_size,
            "uncompressed_size": ci.uncompressed_size,
            "uncompressed_crc": chunk.uncompressed_crc,
            "compression": chunk.compression,
            "message_count": count,
            "first_message_index": first,
        })
        first += count
    return chunks


def make_corruption(out_dir: str) -> None:
    msgs = valid_small_messages()
    # Pick the chunk_size that yields exactly 3 chunks (the first chunk also holds
    # the Schema and Channel records, so sizes differ a little).
    # Among the sizes giving 3 chunks take the most balanced one (ties: smallest).
    chosen = None
    for chunk_size in range(1000, 3000, 10):
        buf = io.BytesIO()
        write_ros2_to(buf, msgs, CompressionType.LZ4, chunk_size)
        layout = chunk_layout(buf.getvalue())
        if len(layout) != 3:
            continue
        smallest = min(c["message_count"] for c in layout)
        if chosen is None or smallest > chosen[0]:
            chosen = (smallest, chunk_size, buf.getvalue(), layout)
    assert chosen is not None, "no chunk_size gives 3 chunks"
    _, chunk_size, valid, chunks = chosen
    assert all(c["uncompressed_crc"] != 0 for c in chunks)
    with open(os.path.join(out_dir, "valid_small.mcap"), "wb") as f:
        f.write(valid)

    c2 = chunks[1]
    before = chunks[0]["message_count"]
    cases: Dict[str, Dict[str, Any]] = {}

    # 1. truncated in the middle of chunk 2
    cut = c2["offset"] + c2["length"] // 2
    cases["truncated_mid_chunk.mcap"] = {
        "expected_error": "truncated",
        "description": f"file cut at byte {cut}, in the middle of the 2nd chunk record",
        "messages_before_error": before,
        "bad_record_offset": c2["offset"],
        "data": valid[:cut],
    }

    # 2. one byte flipped inside chunk 2's LZ4 data: still decompresses to the
    #    right size, but the uncompressed CRC no longer matches.
    flip_at = find_crc_only_flip(valid, c2)
    corrupted = bytearray(valid)
    corrupted[flip_at] ^= 0x01
    cases["corrupt_chunk_crc.mcap"] = {
        "expected_error": "crc_mismatch",
        "description": (f"byte {flip_at} (inside the 2nd chunk's compressed records) xor 0x01; "
                        "LZ4 decoding succeeds with the declared uncompressed_size, the CRC check fails"),
        "messages_before_error": before,
        "bad_record_offset": c2["offset"],
        "flipped_byte_offset": flip_at,
        "chunk_uncompressed_crc": c2["uncompressed_crc"],
        "actual_uncompressed_crc": crc_of_chunk(bytes(corrupted), c2),
        "data": bytes(corrupted),
    }

    # 3. bad magic: 'M' of the leading "\x89MCAP0\r\n" replaced by 'N'
    bad = bytearray(valid)
    bad[1] = ord("N")
    cases["bad_magic.mcap"] = {
        "expected_error": "bad_magic",
        "description": "leading magic is 89 4E 43 41 50 30 0D 0A ('\\x89NCAP0\\r\\n'); rest intact",
        "messages_before_error": 0,
        "bad_record_offset": 0,
        "data": bytes(bad),
    }

    # 4. only the first 10 bytes (magic + Header opcode + 1 byte of its length)
    cases["truncated_header.mcap"] = {
        "expected_error": "truncated",
        "description": "first 10 bytes only: magic, Header opcode 0x01 at offset 8, one length byte",
        "messages_before_error": 0,
        "bad_record_offset": 8,
        "data": valid[:10],
    }

    # 5. chunk 2's record length field set to 2^62
    garbage = bytearray(valid)
    struct.pack_into("<Q", garbage, c2["offset"] + 1, 2 ** 62)
    cases["garbage_record_length.mcap"] = {
        "expected_error": "record_too_large",
        "description": "record length of the 2nd chunk (bytes offset+1..offset+8) set to 2^62",
        "messages_before_error": before,
        "bad_record_offset": c2["offset"],
        "record_length": 2 ** 62,
        "data": bytes(garbage),
    }

    for name, case in cases.items():
        data = case.pop("data")
        case["file_size"] = len(data)
        with open(os.path.join(out_dir, name), "wb") as f:
            f.write(data)

    dump_json(os.path.join(out_dir, "corruption.json"), {
        "source": "valid_small.mcap",
        "note": ("messages_before_error is what a reader that walks the file front to back "
                 "(header, then records in file order) delivers before it fails; "
                 "bad_record_offset is the file offset of the opcode byte of the bad record "
                 "(0 for bad_magic: the magic itself is bad)"),
        "valid": {
            "file": "valid_small.mcap",
            "file_size": len(valid),
            "chunk_size_setting": chunk_size,
            "compression": "lz4",
            "chunks": chunks,
            **summary_entry(msgs),
            "messages": [m.expect for m in msgs],
        },
        "cases": cases,
    })


def write_ros2_to(stream, msgs: List[Msg], compression, chunk_size) -> None:
    writer = Ros2Writer(stream, chunk_size=chunk_size, compression=compression)
    schemas = {}
    for m in msgs:
        if m.schema not in schemas:
            schemas[m.schema] = writer.register_msgdef(m.schema, defs.DEFINITIONS[m.schema])
        writer.write_message(m.topic, schemas[m.schema], m.ros, log_time=m.log_time,
                             publish_time=m.publish_time, sequence=m.sequence)
    writer.finish()


def crc_of_chunk(data: bytes, c: Dict[str, Any]) -> int:
    end = c["offset"] + c["length"]
    raw = lz4.frame.decompress(data[c["records_offset"]:end])
    return zlib.crc32(raw)


def find_crc_only_flip(data: bytes, c: Dict[str, Any]) -> int:
    start = c["records_offset"]
    end = c["offset"] + c["length"]
    mid = (start + end) // 2
    for pos in list(range(mid, end - 8)) + list(range(start + 16, mid)):
        buf = bytearray(data[start:end])
        buf[pos - start] ^= 0x01
        try:
            raw = lz4.frame.decompress(bytes(buf))
        except Exception:
            continue
        if len(raw) == c["uncompressed_size"] and zlib.crc32(raw) != c["uncompressed_crc"]:
            return pos
    raise AssertionError("no suitable byte to flip")


def make_ros2_types(out_dir: str) -> None:
    st = stamp(4000, 125_000_000)
    pose = pose_msg("/agents/a/pose", st, "map", (12.5, -3.25, 0.5), (0.0, 0.0, 0.6, 0.8))
    cov_a = [0.0] * 36
    for i in range(6):
        cov_a[i * 7] = 0.25 * (i + 1)
    cov_b = [i / 64 for i in range(36)]
    dets = [
        detection(st, "map", "17", (10.0, 2.5, 0.75), (0.0, 0.0, 0.0, 1.0), (4.5, 1.875, 1.5),
                  [("car", 0.875, (10.0, 2.5, 0.75), (0.0, 0.0, 0.0, 1.0), cov_a)]),
        detection(st, "map", "18", (-6.25, 8.0, 0.5), (0.0, 0.0, 0.6, 0.8), (0.75, 0.5, 1.75),
                  [("car", 0.5, (-6.25, 8.0, 0.5), (0.0, 0.0, 0.6, 0.8), cov_b),
                   ("pedestrian", 0.25, (-6.0, 8.0, 0.5), (0.0, 0.0, 0.0, 1.0), [0.0] * 36)]),
    ]
    det = det_msg("/ground_truth/objects", st, "map", dets, log_time=stamp_ns(st) + 1_000_000)
    msgs = [pose, det]
    write_ros2(os.path.join(out_dir, "ros2_types.mcap"), msgs, CompressionType.LZ4)
    dump_json(os.path.join(out_dir, "ros2_types.json"), {
        "file": "ros2_types.mcap",
        "chunked": True,
        "compression": "lz4",
        "expect_error": None,
        "messages_before_error": len(msgs),
        **summary_entry(msgs),
        "schemas": {name: {"encoding": "ros2msg", "data_length": len(defs.DEFINITIONS[name].encode())}
                    for name in (POSE, DET)},
        "messages": [m.expect for m in msgs],
    })


def sample_recording_messages(agents: Sequence[str] = ("a", "b"), frames: int = 10,
                              points_per_cloud: int = 32) -> List[Msg]:
    """A small recording shaped like SlimSplit's: per frame and agent a lidar
    cloud, a pose and a measured pose; per frame ground truth and fused
    detections. 10 Hz, all in log-time order."""
    msgs: List[Msg] = []
    base = 5000
    for frame in range(frames):
        t0 = base * NS + frame * 100_000_000
        for a_idx, agent in enumerate(agents):
            st = {"sec": t0 // NS, "nanosec": t0 % NS + a_idx * 1_000_000}
            pts = []
            for p in range(points_per_cloud):
                ang = 2 * math.pi * p / points_per_cloud
                pts.append((round(8 * math.cos(ang), 3), round(8 * math.sin(ang), 3),
                            round(-1.0 + 0.0625 * (p % 8), 4), float((p * 7 + frame) % 100)))
            # round-trip through float32 so the expectation matches what is stored
            pts = [tuple(struct.unpack("<4f", struct.pack("<4f", *p))) for p in pts]
            msgs.append(pc2_msg(f"/agents/{agent}/lidar", st, f"agent_{agent}/lidar",
                                xyzi_cloud(pts), expected_points(pts), sequence=frame))
            x = 2.0 * frame + 10.0 * a_idx
            yaw = 0.1 * frame
            q = (0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2))
            msgs.append(pose_msg(f"/agents/{agent}/pose", st, "map", (x, 1.0 * a_idx, 0.0), q,
                                 sequence=frame, log_time=stamp_ns(st) + 100_000))
            msgs.append(pose_msg(f"/agents/{agent}/pose_measured", st, "map",
                                 (x + 0.05, 1.0 * a_idx - 0.05, 0.0), q, sequence=frame,
                                 log_time=stamp_ns(st) + 200_000))
        st = {"sec": t0 // NS, "nanosec": t0 % NS + 5_000_000}
        gt = [detection(st, "map", str(17 + k), (5.0 + k + 0.5 * frame, -2.0 * k, 0.75),
                        (0.0, 0.0, 0.0, 1.0), (4.5, 1.875, 1.5),
                        [("car", 1.0, (5.0 + k + 0.5 * frame, -2.0 * k, 0.75), (0.0, 0.0, 0.0, 1.0),
                          [0.0] * 36)]) for k in range(2)]
        msgs.append(det_msg("/ground_truth/objects", st, "map", gt, sequence=frame))
        st2 = {"sec": t0 // NS, "nanosec": t0 % NS + 8_000_000}
        fused = [detection(st2, "map", str(17 + k), (5.0 + k + 0.5 * frame + 0.1, -2.0 * k, 0.75),
                           (0.0, 0.0, 0.0, 1.0), (4.25, 1.75, 1.5),
                           [("car", 0.75, (5.1 + k + 0.5 * frame, -2.0 * k, 0.75),
                             (0.0, 0.0, 0.0, 1.0), [0.0] * 36)]) for k in range(2)]
        msgs.append(det_msg("/fusion/detections", st2, "map", fused, sequence=frame))
    msgs.sort(key=lambda m: m.log_time)
    return msgs


def make_sample_recording(out_dir: str) -> None:
    msgs = sample_recording_messages()
    write_ros2(os.path.join(out_dir, "sample_recording.mcap"), msgs, CompressionType.LZ4,
               chunk_size=16 * 1024)


# --------------------------------------------------------------------------
# verification (independent read-back with the official reader)


def to_plain(obj: Any) -> Any:
    """Decoded mcap_ros2 message -> plain JSON-like structure."""
    if isinstance(obj, (bytes, bytearray)):
        return bytes(obj)
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if hasattr(obj, "__slots__"):
        return {k: to_plain(getattr(obj, k)) for k in obj.__slots__}
    return obj


def check_entry(expect: Dict[str, Any], schema, channel, message, decoded) -> None:
    assert channel.topic == expect["topic"], (channel.topic, expect["topic"])
    assert schema.name == expect["schema_name"]
    assert schema.encoding == "ros2msg" and channel.message_encoding == "cdr"
    assert schema.data.decode() == defs.DEFINITIONS[schema.name]
    assert message.log_time == expect["log_time_ns"]
    assert message.publish_time == expect["publish_time_ns"]
    assert message.sequence == expect["sequence"]
    plain = to_plain(decoded)
    assert plain["header"] == expect["header"], (plain["header"], expect["header"])
    t = expect["type"]
    if t == "PointCloud2":
        cloud = expect["cloud"]
        for key in ("height", "width", "is_bigendian", "point_step", "row_step", "is_dense"):
            assert plain[key] == cloud[key], key
        assert plain["fields"] == cloud["fields"]
        assert len(plain["data"]) == cloud["data_length"]
        assert decode_points(decoded) == cloud["points"], (decode_points(decoded), cloud["points"])
    elif t == "PoseStamped":
        assert plain["pose"] == expect["pose"]
    elif t == "Detection3DArray":
        assert plain["detections"] == expect["detections"], plain["detections"]
    else:
        raise AssertionError(t)


def read_all(path: str, validate=True):
    with open(path, "rb") as f:
        reader = make_reader(f, validate_crcs=validate, decoder_factories=[DecoderFactory()])
        summary = reader.get_summary()
        out = list(reader.iter_decoded_messages(log_time_order=False))
        return reader, summary, out


def verify_messages_file(path: str, expectation: Dict[str, Any]) -> None:
    _, summary, out = read_all(path)
    msgs = expectation["messages"]
    assert len(out) == len(msgs), (path, len(out), len(msgs))
    for e, (schema, channel, message, decoded) in zip(msgs, out):
        check_entry(e, schema, channel, message, decoded)
    assert summary is not None and summary.statistics is not None
    assert summary.statistics.message_count == len(msgs)
    if expectation.get("chunked", True):
        assert summary.chunk_indexes, path
        comps = {ci.compression for ci in summary.chunk_indexes}
        assert comps == {expectation["compression"]}, (path, comps)
    else:
        assert not summary.chunk_indexes, path


def linear_count_until_error(path: str) -> Tuple[int, Optional[BaseException]]:
    count = 0
    try:
        with open(path, "rb") as f:
            for _ in NonSeekingReader(f, validate_crcs=True).iter_messages(log_time_order=False):
                count += 1
    except Exception as exc:  # noqa: BLE001 - any failure is what we want to observe
        return count, exc
    return count, None


def verify(out_dir: str) -> None:
    def load(name):
        with open(os.path.join(out_dir, name), encoding="utf-8") as f:
            return json.load(f)

    verify_messages_file(os.path.join(out_dir, "pc2_layouts.mcap"), load("pc2_layouts.json"))
    verify_messages_file(os.path.join(out_dir, "unchunked.mcap"), load("unchunked.json"))
    verify_messages_file(os.path.join(out_dir, "uncompressed_chunks.mcap"),
                         load("uncompressed_chunks.json"))
    verify_messages_file(os.path.join(out_dir, "zstd_chunks.mcap"), load("zstd_chunks.json"))
    verify_messages_file(os.path.join(out_dir, "writer_defaults.mcap"), load("writer_defaults.json"))
    verify_messages_file(os.path.join(out_dir, "ros2_types.mcap"), load("ros2_types.json"))

    corr = load("corruption.json")
    valid = corr["valid"]
    valid["chunked"] = True
    verify_messages_file(os.path.join(out_dir, "valid_small.mcap"), valid)
    count, exc = linear_count_until_error(os.path.join(out_dir, "valid_small.mcap"))
    assert exc is None and count == valid["message_count"], (count, exc)
    for name, case in corr["cases"].items():
        count, exc = linear_count_until_error(os.path.join(out_dir, name))
        assert exc is not None, name
        assert count == case["messages_before_error"], (name, count, case, exc)
        with open(os.path.join(out_dir, name), "rb") as f:
            blob = f.read()
        if name == "truncated_header.mcap":
            assert blob[case["bad_record_offset"]] == 0x01, name  # Header opcode, cut short
        elif case["bad_record_offset"]:
            assert blob[case["bad_record_offset"]] == 0x06, name  # Chunk opcode
    # the seeking reader must fail on the CRC case too
    try:
        read_all(os.path.join(out_dir, "corrupt_chunk_crc.mcap"))
        raise AssertionError("CRC corruption not detected")
    except Exception as exc:  # noqa: BLE001
        assert "crc" in str(exc).lower(), exc

    for name in sorted(os.listdir(out_dir)):
        size = os.path.getsize(os.path.join(out_dir, name))
        assert size < MAX_FIXTURE_BYTES, (name, size)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    ap.add_argument("--no-verify", action="store_true", help="skip the read-back checks")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    make_pc2_layouts(args.out)
    make_unchunked(args.out)
    make_compression_variants(args.out)
    make_writer_defaults(args.out)
    make_corruption(args.out)
    make_ros2_types(args.out)
    make_sample_recording(args.out)
    if not args.no_verify:
        verify(args.out)
    for name in sorted(os.listdir(args.out)):
        print(f"{os.path.getsize(os.path.join(args.out, name)):8d}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
