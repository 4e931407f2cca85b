"""Deterministic safetensors writer.

``safetensors.numpy.save_file`` writes the header JSON from a hash map, so the header's key order
(and the file's bytes) change from run to run even for identical tensors. This writer produces
the same bytes every time: header keys are ``__metadata__`` first, then the tensors in data order;
tensors are ordered by element size (largest first, so every tensor's offset is a multiple of its
element size) then name; the header is padded with spaces to a multiple of 8 bytes, as the
reference implementation does. Files read back with ``safetensors`` unchanged.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

DTYPES = {
    np.dtype("float64"): "F64", np.dtype("float32"): "F32", np.dtype("float16"): "F16",
    np.dtype("int64"): "I64", np.dtype("int32"): "I32", np.dtype("int16"): "I16", np.dtype("int8"): "I8",
    np.dtype("uint64"): "U64", np.dtype("uint32"): "U32", np.dtype("uint16"): "U16", np.dtype("uint8"): "U8",
    np.dtype("bool"): "BOOL",
}


def save_file(tensors: dict[str, np.ndarray], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    for k, v in arrays.items():
        if v.dtype not in DTYPES:
            raise TypeError(f"{k}: unsupported dtype {v.dtype}")
        if v.dtype.byteorder == ">":
            arrays[k] = v.astype(v.dtype.newbyteorder("<"))
    order = sorted(arrays, key=lambda k: (-arrays[k].dtype.itemsize, k))
    header: dict = {}
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError("metadata keys and values must be strings")
        header["__metadata__"] = dict(metadata)
    offset = 0
    for k in order:
        n = arrays[k].nbytes
        header[k] = {"dtype": DTYPES[arrays[k].dtype], "shape": list(arrays[k].shape),
                     "data_offsets": [offset, offset + n]}
        offset += n
    hb = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode()
    hb += b" " * (-len(hb) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for k in order:
            f.write(arrays[k].tobytes())
