"""Read and write SlimSplit model files (docs/model-format.md, format 1).

A model file is a safetensors file whose ``__metadata__`` holds ``format``, ``format_version`` and
``architecture`` (a JSON string). Tensor names and layouts (PyTorch):

    {layer}.weight                          F32 [out, in/groups, kh, kw]   full width
    {layer}.bias                            F32 [out]                      if bias
    {layer}.bn.{i}.weight|bias|running_mean|running_var
                                            F32 [active out at width i]    batch_norm switchable
    {layer}.bn.weight|bias|running_mean|running_var
                                            F32 [out]                      batch_norm shared
    {layer}.int8.{i}.weight                 I8  [co, ci/groups, kh, kw]
    {layer}.int8.{i}.weight_scale           F32 [co]
    {layer}.int8.{i}.bias                   I32 [co]
    {tensor}.int8.{i}.qparams               F32 [2]  (scale, zero point)  tensor = input or a layer
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from .st_write import save_file

from .arch import FORMAT, FORMAT_VERSION, SlimNet, arch_json, layer_channels, validate_arch

BN_FIELDS = ("weight", "bias", "running_mean", "running_var")


def _np(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy().astype(np.float32))


def float_tensors(net: SlimNet) -> dict[str, np.ndarray]:
    """The float tensors of ``net`` under the model-format names."""
    arch = net.arch
    out: dict[str, np.ndarray] = {}
    for spec in arch["layers"]:
        name = spec["name"]
        layer = net.layers[name]
        out[f"{name}.weight"] = _np(layer.weight)
        if layer.bias is not None:
            out[f"{name}.bias"] = _np(layer.bias)
        if spec.get("batch_norm") == "switchable":
            for i, bn in enumerate(layer.bn):
                for f in BN_FIELDS:
                    out[f"{name}.bn.{i}.{f}"] = _np(getattr(bn, f))
        elif spec.get("batch_norm") == "shared":
            for f in BN_FIELDS:
                out[f"{name}.bn.{f}"] = _np(getattr(layer.bn, f))
    return out


def expected_shapes(arch: dict[str, Any], with_int8: bool) -> dict[str, tuple[tuple[int, ...], str]]:
    """name -> (shape, numpy dtype name) of every tensor the architecture needs."""
    need: dict[str, tuple[tuple[int, ...], str]] = {}
    nw = len(arch["widths"])
    for spec in arch["layers"]:
        name, cin, cout, g = spec["name"], spec["in_channels"], spec["out_channels"], spec["groups"]
        kh, kw = spec["kernel"]
        need[f"{name}.weight"] = ((cout, cin // g, kh, kw), "float32")
        if spec["bias"]:
            need[f"{name}.bias"] = ((cout,), "float32")
        if spec.get("batch_norm") == "switchable":
            for i in range(nw):
                co = layer_channels(arch, spec, i)[1]
                for f in BN_FIELDS:
                    need[f"{name}.bn.{i}.{f}"] = ((co,), "float32")
        elif spec.get("batch_norm") == "shared":
            for f in BN_FIELDS:
                need[f"{name}.bn.{f}"] = ((cout,), "float32")
        if with_int8:
            for i in range(nw):
                ci, co, gi = layer_channels(arch, spec, i)
                need[f"{name}.int8.{i}.weight"] = ((co, ci // gi, kh, kw), "int8")
                need[f"{name}.int8.{i}.weight_scale"] = ((co,), "float32")
                need[f"{name}.int8.{i}.bias"] = ((co,), "int32")
    if with_int8:
        for i in range(nw):
            for t in [arch["input"]["name"]] + [s["name"] for s in arch["layers"]]:
                need[f"{t}.int8.{i}.qparams"] = ((2,), "float32")
    return need


def check_tensors(arch: dict[str, Any], tensors: dict[str, np.ndarray]) -> bool:
    """Raise if a needed tensor is missing or wrong; returns whether int8 tensors are present."""
    with_int8 = any(".int8." in k for k in tensors)
    need = expected_shapes(arch, with_int8)
    for name, (shape, dtype) in need.items():
        if name not in tensors:
            raise ValueError(f"{name}: missing")
        t = tensors[name]
        if tuple(t.shape) != shape or t.dtype.name != dtype:
            raise ValueError(f"{name}: {t.dtype.name} {list(t.shape)}, expected {dtype} {list(shape)}")
    extra = sorted(set(tensors) - set(need))
    if extra:
        raise ValueError(f"unexpected tensors: {extra}")
    return with_int8


def save_model(path: str | Path, arch: dict[str, Any], tensors: dict[str, np.ndarray]) -> None:
    validate_arch(arch)
    check_tensors(arch, tensors)
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "architecture": arch_json(arch)}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata=metadata)


def load_model(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(architecture, tensors) of a model file, checked against each other."""
    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: not a {FORMAT} v{FORMAT_VERSION} file (metadata {meta})")
        arch = json.loads(meta["architecture"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    validate_arch(arch)
    check_tensors(arch, tensors)
    return arch, tensors


def net_from_tensors(arch: dict[str, Any], tensors: dict[str, np.ndarray]) -> SlimNet:
    """A SlimNet (eval mode) holding the float tensors."""
    net = SlimNet(arch)
    with torch.no_grad():
        for spec in arch["layers"]:
            name = spec["name"]
            layer = net.layers[name]
            layer.weight.copy_(torch.from_numpy(tensors[f"{name}.weight"]))
            if layer.bias is not None:
                layer.bias.copy_(torch.from_numpy(tensors[f"{name}.bias"]))
            if spec.get("batch_norm") == "switchable":
                for i, bn in enumerate(layer.bn):
                    for fld in BN_FIELDS:
                        getattr(bn, fld).copy_(torch.from_numpy(tensors[f"{name}.bn.{i}.{fld}"]))
            elif spec.get("batch_norm") == "shared":
                for fld in BN_FIELDS:
                    getattr(layer.bn, fld).copy_(torch.from_numpy(tensors[f"{name}.bn.{fld}"]))
    net.eval()
    return net


def load_net(path: str | Path) -> tuple[SlimNet, dict[str, Any], dict[str, np.ndarray]]:
    arch, tensors = load_model(path)
    return net_from_tensors(arch, tensors), arch, tensors
