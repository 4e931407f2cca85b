#!/usr/bin/env python3
"""Validate a SlimSplit MCAP recording with the official MCAP Python tools.

    check_recording.py PATH [--agents N] [--json] [--compression lz4|none|zstd|any]

Reads PATH with ``mcap.reader.make_reader(validate_crcs=True)``, decodes every
message with ``mcap_ros2.decoder.DecoderFactory`` and checks that it is a
well-formed SlimSplit recording:

* file structure: ros2 profile; a summary with statistics, chunk indexes,
  schemas and channels; summary offsets in the footer; the summary CRC; every
  chunk has message indexes, their entries add up to the statistics; chunk
  compression as expected (``--compression``, default lz4); a second, linear
  pass (``NonSeekingReader``) validates every chunk CRC and the data-section
  CRC and must see the same messages;
* channels: schema encoding ``ros2msg``, message encoding ``cdr``; topic names
  ``/agents/<id>/lidar`` (sensor_msgs/msg/PointCloud2), ``/agents/<id>/pose``
  and ``/agents/<id>/pose_measured`` (geometry_msgs/msg/PoseStamped),
  ``/ground_truth/objects`` and ``/fusion/detections``
  (vision_msgs/msg/Detection3DArray); ``--agents N``: exactly N agent ids;
* messages: per-topic counts equal the summary statistics; log_time never
  decreases within a topic (file order); PointCloud2 has float32 x, y, z and
  an intensity field, at least one point, fields inside point_step, a data
  length of row_step*height (point_step*width*height when rows are unpadded);
  PoseStamped orientations are unit quaternions; Detection3DArray boxes have
  positive finite sizes.

Prints a summary (JSON with ``--json``: topics with counts and rates, time
span, totals and the list of problems). Exit status 0 iff there are no
problems, 1 if there are, 2 for usage errors.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import struct
import sys
import zlib
from collections import OrderedDict, defaultdict
from typing import Any, Dict, List, Optional

from mcap.data_stream import ReadDataStream
from mcap.reader import NonSeekingReader, make_reader
from mcap.records import MessageIndex
from mcap_ros2.decoder import DecoderFactory

MAGIC = b"\x89MCAP0\r\n"
FOOTER_OPCODE = 0x02
MESSAGE_INDEX_OPCODE = 0x07
FOOTER_RECORD_LEN = 1 + 8 + 8 + 8 + 4  # opcode, length, summary_start, summary_offset_start, crc

PC2 = "sensor_msgs/msg/PointCloud2"
POSE = "geometry_msgs/msg/PoseStamped"
DET = "vision_msgs/msg/Detection3DArray"
VIS = "slimsplit_msgs/msg/Visibility"

TOPIC_RULES = [
    (re.compile(r"^/agents/([A-Za-z0-9_]+)/lidar$"), PC2),
    (re.compile(r"^/agents/([A-Za-z0-9_]+)/pose$"), POSE),
    (re.compile(r"^/agents/([A-Za-z0-9_]+)/pose_measured$"), POSE),
    (re.compile(r"^/ground_truth/objects$"), DET),
    (re.compile(r"^/fusion/detections$"), DET),
    (re.compile(r"^/ground_truth/visibility$"), VIS),
]

FLOAT32 = 7
DT_SIZE = {1: 1, 2: 1, 3: 2, 4: 2, 5: 4, 6: 4, 7: 4, 8: 8}
QUAT_TOLERANCE = 1e-3


class Problems:
    """Problem list with a cap per kind so a broken recording stays readable."""

    def __init__(self, per_kind: int = 20):
        self.items: List[str] = []
        self.per_kind = per_kind
        self.counts: Dict[str, int] = defaultdict(int)

    def add(self, kind: str, text: str) -> None:
        self.counts[kind] += 1
        if self.counts[kind] <= self.per_kind:
            self.items.append(f"{kind}: {text}")

    def finish(self) -> List[str]:
        out = list(self.items)
        for kind, n in self.counts.items():
            if n > self.per_kind:
                out.append(f"{kind}: ... and {n - self.per_kind} more")
        return out

    def __bool__(self) -> bool:
        return bool(self.counts)


def classify_topic(topic: str):
    for pattern, schema in TOPIC_RULES:
        m = pattern.match(topic)
        if m:
            return schema, (m.group(1) if m.groups() else None)
    return None, None


# --------------------------------------------------------------------------
# structural checks that the Python reader does not do by itself


def check_footer_and_summary_crc(blob: bytes, problems: Problems) -> None:
    if len(blob) < len(MAGIC) * 2 + FOOTER_RECORD_LEN:
        problems.add("structure", "file too short for a footer")
        return
    if blob[-8:] != MAGIC:
        problems.add("structure", "trailing magic missing (file not finished?)")
        return
    footer_at = len(blob) - 8 - FOOTER_RECORD_LEN
    if blob[footer_at] != FOOTER_OPCODE:
        problems.add("structure", f"no footer record at offset {footer_at}")
        return
    length, summary_start, summary_offset_start, summary_crc = struct.unpack_from(
        "<QQQI", blob, footer_at + 1)
    if length != 20:
        problems.add("structure", f"footer length {length}, expected 20")
    if summary_start == 0:
        problems.add("summary", "footer has no summary section (summary_start = 0)")
        return
    if summary_offset_start == 0:
        problems.add("summary", "footer has no summary offsets (summary_offset_start = 0)")
    if summary_crc != 0:
        crc = zlib.crc32(blob[summary_start:footer_at + 1 + 8 + 8 + 8])
        if crc != summary_crc:
            problems.add("summary", f"summary CRC mismatch: footer {summary_crc:#010x}, "
                                    f"computed {crc:#010x}")


def check_message_indexes(blob: bytes, summary, problems: Problems) -> Dict[int, int]:
    """Sum the Message Index entries per channel; every chunk must have them."""
    per_channel: Dict[int, int] = defaultdict(int)
    for n, ci in enumerate(summary.chunk_indexes):
        if not ci.message_index_offsets:
            problems.add("message_index", f"chunk {n} at offset {ci.chunk_start_offset} "
                                          "has no message indexes")
            continue
        for channel_id, offset in ci.message_index_offsets.items():
            if offset + 9 > len(blob) or blob[offset] != MESSAGE_INDEX_OPCODE:
                problems.add("message_index", f"chunk {n}: no Message Index record at {offset}")
                continue
            (length,) = struct.unpack_from("<Q", blob, offset + 1)
            record = MessageIndex.read(
                ReadDataStream(io.BytesIO(blob[offset + 9:offset + 9 + length])))
            if record.channel_id != channel_id:
                problems.add("message_index", f"chunk {n}: index at {offset} is for channel "
                                              f"{record.channel_id}, expected {channel_id}")
            per_channel[record.channel_id] += len(record.records)
    return per_channel


# --------------------------------------------------------------------------
# per-message checks


def check_pointcloud2(topic: str, n: int, msg, problems: Problems) -> None:
    where = f"{topic} #{n}"
    fields = {f.name: f for f in msg.fields}
    for axis in ("x", "y", "z"):
        f = fields.get(axis)
        if f is None:
            problems.add("pointcloud2", f"{where}: no '{axis}' field")
        elif f.datatype != FLOAT32 or f.count != 1:
            problems.add("pointcloud2", f"{where}: field '{axis}' has datatype {f.datatype} "
                                        f"count {f.count}, expected float32 (7) count 1")
    if "intensity" not in fields:
        problems.add("pointcloud2", f"{where}: no 'intensity' field")
    for f in msg.fields:
        size = DT_SIZE.get(f.datatype)
        if size is None:
            problems.add("pointcloud2", f"{where}: field '{f.name}' has unknown datatype "
                                        f"{f.datatype}")
        elif f.offset + size * max(f.count, 1) > msg.point_step:
            problems.add("pointcloud2", f"{where}: field '{f.name}' (offset {f.offset}) does "
                                        f"not fit in point_step {msg.point_step}")
    points = msg.width * msg.height
    if points < 1:
        problems.add("pointcloud2", f"{where}: empty cloud (width {msg.width}, "
                                    f"height {msg.height})")
    data_len = len(msg.data)
    if msg.row_step == msg.width * msg.point_step:
        if msg.point_step * msg.width * msg.height != data_len:
            problems.add("pointcloud2", f"{where}: point_step*width*height = "
                                        f"{msg.point_step * points} but len(data) = {data_len}")
    else:
        if msg.row_step < msg.width * msg.point_step:
            problems.add("pointcloud2", f"{where}: row_step {msg.row_step} < width*point_step "
                                        f"{msg.width * msg.point_step}")
        if msg.row_step * msg.height != data_len:
            problems.add("pointcloud2", f"{where}: row_step*height = "
                                        f"{msg.row_step * msg.height} but len(data) = {data_len}")


def check_pose(topic: str, n: int, msg, problems: Problems) -> None:
    q = msg.pose.orientation
    p = msg.pose.position
    norm = math.sqrt(q.x * q.x + q.y * q.y + q.z * q.z + q.w * q.w)
    if not math.isfinite(norm) or abs(norm - 1.0) > QUAT_TOLERANCE:
        problems.add("pose", f"{topic} #{n}: orientation is not a unit quaternion "
                             f"(norm {norm!r})")
    if not all(math.isfinite(v) for v in (p.x, p.y, p.z)):
        problems.add("pose", f"{topic} #{n}: non-finite position")


def check_detections(topic: str, n: int, msg, problems: Problems) -> None:
    for k, det in enumerate(msg.detections):
        s = det.bbox.size
        if not all(math.isfinite(v) and v > 0 for v in (s.x, s.y, s.z)):
            problems.add("detection", f"{topic} #{n} detection {k} (id {det.id!r}): bbox size "
                                      f"({s.x}, {s.y}, {s.z}) is not positive")


CHECKS = {PC2: check_pointcloud2, POSE: check_pose, DET: check_detections}


# --------------------------------------------------------------------------


def check(path: str, agents: Optional[int] = None, compression: str = "lz4") -> Dict[str, Any]:
    problems = Problems()
    report: Dict[str, Any] = OrderedDict(path=path, ok=False)
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError as exc:
        problems.add("io", str(exc))
        report["problems"] = problems.finish()
        return report
    report["file_size"] = len(blob)

    topic_stats: Dict[str, Dict[str, Any]] = OrderedDict()
    try:
        reader = make_reader(io.BytesIO(blob), validate_crcs=True,
                             decoder_factories=[DecoderFactory()])
        header = reader.get_header()
        report["profile"] = header.profile
        report["library"] = header.library
        if header.profile != "ros2":
            problems.add("structure", f"profile is {header.profile!r}, expected 'ros2'")
        check_footer_and_summary_crc(blob, problems)

        summary = reader.get_summary()
        if summary is None:
            problems.add("summary", "no summary section")
            raise _Stop()
        stats = summary.statistics
        if stats is None:
            problems.add("summary", "summary has no Statistics record")
        if not summary.chunk_indexes:
            problems.add("summary", "summary has no Chunk Index records")
        if not summary.schemas:
            problems.add("summary", "summary has no Schema records")
        if not summary.channels:
            problems.add("summary", "summary has no Channel records")

        report["chunk_count"] = len(summary.chunk_indexes)
        report["chunk_compression"] = sorted({ci.compression for ci in summary.chunk_indexes})
        if compression != "any":
            want = "" if compression == "none" else compression
            for ci in summary.chunk_indexes:
                if ci.compression != want:
                    problems.add("compression", f"chunk at {ci.chunk_start_offset} uses "
                                                f"{ci.compression or 'no compression'!r}, "
                                                f"expected {compression!r}")
        if stats is not None and stats.chunk_count != len(summary.chunk_indexes):
            problems.add("summary", f"statistics chunk_count {stats.chunk_count} != "
                                    f"{len(summary.chunk_indexes)} chunk indexes")

        # channels and schemas
        agent_ids = set()
        for cid, ch in sorted(summary.channels.items()):
            schema = summary.schemas.get(ch.schema_id)
            schema_name = schema.name if schema else None
            if schema is None:
                problems.add("channel", f"{ch.topic}: schema id {ch.schema_id} not in summary")
            elif schema.encoding != "ros2msg":
                problems.add("channel", f"{ch.topic}: schema encoding {schema.encoding!r}, "
                                        "expected 'ros2msg'")
            if ch.message_encoding != "cdr":
                problems.add("channel", f"{ch.topic}: message encoding "
                                        f"{ch.message_encoding!r}, expected 'cdr'")
            want_schema, agent = classify_topic(ch.topic)
            if want_schema is None:
                problems.add("topic", f"{ch.topic!r} is not a SlimSplit topic")
            elif schema_name is not None and schema_name != want_schema:
                problems.add("topic", f"{ch.topic}: schema {schema_name!r}, expected "
                                      f"{want_schema!r}")
            if agent is not None:
                agent_ids.add(agent)
            topic_stats[ch.topic] = OrderedDict(
                channel_id=cid, schema=schema_name, count=0,
                summary_count=(stats.channel_message_counts.get(cid, 0) if stats else None),
                first_log_time_ns=None, last_log_time_ns=None, rate_hz=None)
        report["agents"] = sorted(agent_ids)
        if agents is not None and len(agent_ids) != agents:
            problems.add("agents", f"found {len(agent_ids)} agent(s) {sorted(agent_ids)}, "
                                   f"expected {agents}")

        index_counts = check_message_indexes(blob, summary, problems)

        # every message, in file order, decoded
        total = 0
        start = end = None
        by_channel = {s["channel_id"]: (t, s) for t, s in topic_stats.items()}
        for schema, channel, message, decoded in reader.iter_decoded_messages(
                log_time_order=False):
            total += 1
            topic, st = by_channel[channel.id]
            n = st["count"]
            st["count"] += 1
            if st["last_log_time_ns"] is not None and message.log_time < st["last_log_time_ns"]:
                problems.add("order", f"{topic} #{n}: log_time {message.log_time} < previous "
                                      f"{st['last_log_time_ns']}")
            if st["first_log_time_ns"] is None:
                st["first_log_time_ns"] = message.log_time
            st["last_log_time_ns"] = message.log_time
            start = message.log_time if start is None else min(start, message.log_time)
            end = message.log_time if end is None else max(end, message.log_time)
            fn = CHECKS.get(schema.name if schema else None)
            if fn is not None:
                fn(topic, n, decoded, problems)

        report["message_count"] = total
        if stats is not None:
            if stats.message_count != total:
                problems.add("statistics", f"statistics message_count {stats.message_count}, "
                                           f"read {total}")
            if total and (stats.message_start_time != start or stats.message_end_time != end):
                problems.add("statistics", f"statistics time range [{stats.message_start_time}, "
                                           f"{stats.message_end_time}], messages span "
                                           f"[{start}, {end}]")
        for topic, st in topic_stats.items():
            if st["summary_count"] is not None and st["summary_count"] != st["count"]:
                problems.add("statistics", f"{topic}: read {st['count']} messages, statistics "
                                           f"say {st['summary_count']}")
            if summary.chunk_indexes and index_counts.get(st["channel_id"], 0) != st["count"]:
                problems.add("message_index", f"{topic}: message indexes list "
                                              f"{index_counts.get(st['channel_id'], 0)} messages, "
                                              f"read {st['count']}")
            if st["count"] >= 2 and st["last_log_time_ns"] > st["first_log_time_ns"]:
                span = (st["last_log_time_ns"] - st["first_log_time_ns"]) / 1e9
                st["rate_hz"] = round((st["count"] - 1) / span, 6)
        report["time_span"] = OrderedDict(
            start_ns=start, end_ns=end,
            duration_s=(end - start) / 1e9 if start is not None else None)

        # linear pass: validates every chunk CRC and the data-section CRC
        linear = 0
        for _ in NonSeekingReader(io.BytesIO(blob), validate_crcs=True).iter_messages(
                log_time_order=False):
            linear += 1
        if linear != total:
            problems.add("structure", f"linear read found {linear} messages, indexed read {total}")
    except _Stop:
        pass
    except Exception as exc:  # noqa: BLE001 - report any reader failure as a problem
        problems.add("read", f"{type(exc).__name__}: {exc}")

    report["topics"] = OrderedDict(
        (t, OrderedDict((k, v) for k, v in s.items() if k != "channel_id"))
        for t, s in topic_stats.items())
    report["problems"] = problems.finish()
    report["ok"] = not problems
    return report


class _Stop(Exception):
    pass


def print_text(report: Dict[str, Any]) -> None:
    print(f"{report['path']}: {'OK' if report['ok'] else 'PROBLEMS'}")
    if "profile" in report:
        print(f"  profile {report['profile']!r}, library {report.get('library')!r}, "
              f"{report.get('file_size')} bytes, {report.get('chunk_count')} chunks "
              f"{report.get('chunk_compression')}")
    span = report.get("time_span")
    if span and span.get("start_ns") is not None:
        print(f"  {report.get('message_count')} messages, {span['start_ns']} .. {span['end_ns']} "
              f"ns ({span['duration_s']:.3f} s), agents {report.get('agents')}")
    for topic, st in report.get("topics", {}).items():
        rate = f"{st['rate_hz']:.3f} Hz" if st.get("rate_hz") else "-"
        print(f"  {topic:32s} {st['count']:7d}  {rate:>12s}  {st['schema']}")
    for p in report["problems"]:
        print(f"  PROBLEM {p}")


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="Validate a SlimSplit MCAP recording.")
    ap.add_argument("path")
    ap.add_argument("--agents", type=int, default=None, help="expected number of agents")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    ap.add_argument("--compression", default="lz4", choices=["lz4", "zstd", "none", "any"],
                    help="expected chunk compression (default: lz4)")
    args = ap.parse_args(argv)
    report = check(args.path, agents=args.agents, compression=args.compression)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_text(report)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
