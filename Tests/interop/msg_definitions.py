"""ROS 2 Humble message definitions, concatenated the way rosbag2 writes them.

SlimSplit writes MCAP files with the ``ros2`` profile: every Schema record has
encoding ``ros2msg`` and its data is the top-level ``.msg`` text followed by
each dependency, depth first, as

    <definition of the type itself>\n
    ================================================================================\n
    MSG: pkg/Type\n
    <definition of the dependency>\n
    ...

This mirrors rosbag2's ``MessageDefinitionCache::get_full_text`` (Humble):
the dependencies of one definition are visited in sorted ``pkg/Type`` order,
each type is emitted once (the first time it is seen), and the separator line
is 80 ``=`` characters. Field types inside a dependency keep the spelling of
the ``.msg`` file (``Point position`` inside ``geometry_msgs/Pose`` is relative
to the ``geometry_msgs`` package named by its ``MSG:`` line).

The per-type texts below are the Humble definitions (common_interfaces 4.2.x,
vision_msgs 4.1.x) with the comment lines and blank lines removed: every field,
constant and default value is kept exactly as in the ``.msg`` files, only the
prose is dropped. Types without a package-qualified name resolve inside their
own package, as in the original files.

``DEFINITIONS`` (type name -> full concatenated text) is what the fixtures in
Tests/Fixtures/mcap use as schema data; the Swift writer must embed the very
same bytes (UTF-8). Run ``python msg_definitions.py`` to print them as JSON
together with their lengths and SHA-256 digests.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from typing import Dict, List

SEPARATOR = "=" * 80

# One entry per .msg file: "pkg/Type" -> text of the file (comments stripped,
# terminated by a newline like a file on disk).
MSG_FILES: Dict[str, str] = {
    "builtin_interfaces/Time": (
        "int32 sec\n"
        "uint32 nanosec\n"
    ),
    "std_msgs/Header": (
        "builtin_interfaces/Time stamp\n"
        "string frame_id\n"
    ),
    "geometry_msgs/Point": (
        "float64 x\n"
        "float64 y\n"
        "float64 z\n"
    ),
    "geometry_msgs/Quaternion": (
        "float64 x 0\n"
        "float64 y 0\n"
        "float64 z 0\n"
        "float64 w 1\n"
    ),
    "geometry_msgs/Vector3": (
        "float64 x\n"
        "float64 y\n"
        "float64 z\n"
    ),
    "geometry_msgs/Pose": (
        "Point position\n"
        "Quaternion orientation\n"
    ),
    "geometry_msgs/PoseStamped": (
        "std_msgs/Header header\n"
        "Pose pose\n"
    ),
    "geometry_msgs/PoseWithCovariance": (
        "Pose pose\n"
        "float64[36] covariance\n"
    ),
    "sensor_msgs/PointField": (
        "uint8 INT8 = 1\n"
        "uint8 UINT8 = 2\n"
        "uint8 INT16 = 3\n"
        "uint8 UINT16 = 4\n"
        "uint8 INT32 = 5\n"
        "uint8 UINT32 = 6\n"
        "uint8 FLOAT32 = 7\n"
        "uint8 FLOAT64 = 8\n"
        "string name\n"
        "uint32 offset\n"
        "uint8 datatype\n"
        "uint32 count\n"
    ),
    "sensor_msgs/PointCloud2": (
        "std_msgs/Header header\n"
        "uint32 height\n"
        "uint32 width\n"
        "PointField[] fields\n"
        "bool is_bigendian\n"
        "uint32 point_step\n"
        "uint32 row_step\n"
        "uint8[] data\n"
        "bool is_dense\n"
    ),
    "vision_msgs/ObjectHypothesis": (
        "string class_id\n"
        "float64 score\n"
    ),
    "vision_msgs/ObjectHypothesisWithPose": (
        "ObjectHypothesis hypothesis\n"
        "geometry_msgs/PoseWithCovariance pose\n"
    ),
    "vision_msgs/BoundingBox3D": (
        "geometry_msgs/Pose center\n"
        "geometry_msgs/Vector3 size\n"
    ),
    "vision_msgs/Detection3D": (
        "std_msgs/Header header\n"
        "ObjectHypothesisWithPose[] results\n"
        "BoundingBox3D bbox\n"
        "string id\n"
    ),
    "vision_msgs/Detection3DArray": (
        "std_msgs/Header header\n"
        "Detection3D[] detections\n"
    ),
}

PRIMITIVE_TYPES = {
    "bool", "byte", "char", "float32", "float64", "int8", "uint8", "int16",
    "uint16", "int32", "uint32", "int64", "uint64", "string", "wstring",
}

_FIELD_TYPE = re.compile(r"^\s*([A-Za-z0-9_/]+)(?:\[[^\]]*\])?\s+", re.MULTILINE)


def _dependencies(short_name: str) -> List[str]:
    """Sorted set of the non-primitive types a .msg text refers to (rosbag2 rule)."""
    package = short_name.split("/")[0]
    deps = set()
    for match in _FIELD_TYPE.finditer(MSG_FILES[short_name]):
        ftype = match.group(1)
        if ftype in PRIMITIVE_TYPES:
            continue
        deps.add(ftype if "/" in ftype else f"{package}/{ftype}")
    return sorted(deps)


def full_text(type_name: str) -> str:
    """rosbag2-style concatenation for ``pkg/msg/Type`` (or ``pkg/Type``)."""
    parts = type_name.split("/")
    root = f"{parts[0]}/{parts[-1]}"
    seen = set()

    def append(name: str) -> str:
        text = MSG_FILES[name]
        for dep in _dependencies(name):
            if dep in seen:
                continue
            seen.add(dep)
            text += "\n" + SEPARATOR + "\n" + "MSG: " + dep + "\n" + append(dep)
        return text

    return append(root)


POINT_CLOUD2 = "sensor_msgs/msg/PointCloud2"
POSE_STAMPED = "geometry_msgs/msg/PoseStamped"
DETECTION3D_ARRAY = "vision_msgs/msg/Detection3DArray"

# Schema name (as written in the MCAP Schema record) -> full ros2msg text.
DEFINITIONS: Dict[str, str] = {
    name: full_text(name) for name in (POINT_CLOUD2, POSE_STAMPED, DETECTION3D_ARRAY)
}


def main(argv: List[str]) -> int:
    out = {
        name: {
            "length": len(text.encode("utf-8")),
            "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
            "text": text,
        }
        for name, text in DEFINITIONS.items()
    }
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
