"""Architecture description (docs/model-format.md) and the PyTorch slimmable model built from it.

The architecture is a plain dict with the keys of the JSON stored in a model file's
``__metadata__["architecture"]``; ``load_arch`` reads it from YAML (Configs/models/*.yaml) or
JSON. ``SlimNet`` runs it at a width index: every slim dimension uses its first
``active_channels(widths[i], C)`` channels, i.e. each convolution uses ``weight[:co, :ci]`` of the
full-width weight, followed by the width's own BatchNorm (``switchable``) or the first ``co``
statistics of the shared one, then the activation.
"""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml

FORMAT = "slimsplit-model"
FORMAT_VERSION = "1"

LAYER_TYPES = ("conv2d",)
ACTIVATIONS = (None, "relu", "relu6")
BATCH_NORMS = (None, "switchable", "shared")


def active_channels(width: float, channels: int) -> int:
    """ceil(width * channels), computed exactly on the decimal value of ``width``.

    ``Fraction(repr(w))`` avoids a float product that lands a hair above an integer
    (e.g. 0.1 * 30 = 3.0000000000000004 would give 4 with a plain ``math.ceil``).
    """
    exact = Fraction(repr(float(width))) * channels
    n = math.ceil(exact)
    return max(1, min(channels, n))


def load_arch(path: str | Path) -> dict[str, Any]:
    """Read an architecture from YAML or JSON and validate it."""
    text = Path(path).read_text()
    arch = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    validate_arch(arch)
    return arch


def arch_json(arch: dict[str, Any]) -> str:
    """The compact JSON string stored as ``__metadata__["architecture"]``."""
    return json.dumps(arch, separators=(",", ":"))


def _pair(v: Any, what: str) -> list[int]:
    if isinstance(v, int):
        return [v, v]
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, int) for x in v):
        return [int(v[0]), int(v[1])]
    raise ValueError(f"{what}: expected an int pair, got {v!r}")


def validate_arch(arch: dict[str, Any]) -> None:
    for key in ("name", "version", "input", "widths", "layers", "output"):
        if key not in arch:
            raise ValueError(f"architecture: missing key {key!r}")
    widths = arch["widths"]
    if not widths or any(not (0 < float(w) <= 1) for w in widths):
        raise ValueError(f"architecture: widths must be in (0, 1], got {widths!r}")
    known = {arch["input"]["name"]: arch["input"]["channels"]}
    for layer in arch["layers"]:
        name = layer["name"]
        if layer["type"] not in LAYER_TYPES:
            raise ValueError(f"{name}: unknown layer type {layer['type']!r}")
        if name in known:
            raise ValueError(f"{name}: duplicate tensor name")
        src = layer["input"]
        if src not in known:
            raise ValueError(f"{name}: input {src!r} is not the model input or an earlier layer")
        if known[src] != layer["in_channels"]:
            raise ValueError(f"{name}: in_channels {layer['in_channels']} != {src} channels {known[src]}")
        for k in ("kernel", "stride", "padding", "dilation"):
            _pair(layer[k], f"{name}.{k}")
        g = layer["groups"]
        if layer["in_channels"] % g or layer["out_channels"] % g:
            raise ValueError(f"{name}: channels not divisible by groups {g}")
        if layer.get("activation") not in ACTIVATIONS:
            raise ValueError(f"{name}: unknown activation {layer.get('activation')!r}")
        if layer.get("batch_norm") not in BATCH_NORMS:
            raise ValueError(f"{name}: unknown batch_norm {layer.get('batch_norm')!r}")
        if g != 1:
            depthwise = g == layer["in_channels"] == layer["out_channels"]
            if not depthwise and (layer["slim_in"] or layer["slim_out"]):
                raise ValueError(f"{name}: a grouped (non-depthwise) layer cannot be slim")
            if depthwise and layer["slim_in"] != layer["slim_out"]:
                raise ValueError(f"{name}: a depthwise layer is slim in both or neither")
        known[name] = layer["out_channels"]
    if arch["output"] not in known:
        raise ValueError(f"architecture: output {arch['output']!r} is not a tensor")


def layer_channels(arch: dict[str, Any], layer: dict[str, Any], width_index: int) -> tuple[int, int, int]:
    """(active in channels, active out channels, groups) of ``layer`` at ``width_index``."""
    w = arch["widths"][width_index]
    ci = active_channels(w, layer["in_channels"]) if layer["slim_in"] else layer["in_channels"]
    co = active_channels(w, layer["out_channels"]) if layer["slim_out"] else layer["out_channels"]
    g = layer["groups"]
    if g != 1 and g == layer["in_channels"] == layer["out_channels"]:
        g = co  # depthwise: one group per active channel
    return ci, co, g


def tensor_channels(arch: dict[str, Any], width_index: int) -> dict[str, int]:
    """Active channels of every tensor (model input and layer outputs) at ``width_index``."""
    out = {arch["input"]["name"]: arch["input"]["channels"]}
    for layer in arch["layers"]:
        out[layer["name"]] = layer_channels(arch, layer, width_index)[1]
    return out


class SlimConv2d(nn.Module):
    """A conv2d layer of the architecture: full-width weight, sliced per width."""

    def __init__(self, spec: dict[str, Any], arch: dict[str, Any]):
        super().__init__()
        self.spec = spec
        self.arch = arch
        cin, cout, g = spec["in_channels"], spec["out_channels"], spec["groups"]
        kh, kw = _pair(spec["kernel"], "kernel")
        self.stride = _pair(spec["stride"], "stride")
        self.padding = _pair(spec["padding"], "padding")
        self.dilation = _pair(spec["dilation"], "dilation")
        self.weight = nn.Parameter(torch.empty(cout, cin // g, kh, kw))
        self.bias = nn.Parameter(torch.zeros(cout)) if spec["bias"] else None
        nn.init.kaiming_normal_(self.weight, nonlinearity="relu")
        bn = spec.get("batch_norm")
        eps = float(spec.get("bn_eps", 1e-5))
        if bn == "switchable":
            self.bn = nn.ModuleList(
                nn.BatchNorm2d(layer_channels(arch, spec, i)[1], eps=eps) for i in range(len(arch["widths"]))
            )
        elif bn == "shared":
            self.bn = nn.BatchNorm2d(cout, eps=eps)
        else:
            self.bn = None

    def sliced(self, width_index: int) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        ci, co, g = layer_channels(self.arch, self.spec, width_index)
        w = self.weight[:co, : ci // g]
        b = self.bias[:co] if self.bias is not None else None
        return w, b, g

    def bn_params(self, width_index: int) -> tuple[torch.Tensor, ...] | None:
        """(gamma, beta, running_mean, running_var, eps) for the active channels, or None."""
        if self.bn is None:
            return None
        co = layer_channels(self.arch, self.spec, width_index)[1]
        bn = self.bn[width_index] if isinstance(self.bn, nn.ModuleList) else self.bn
        return (bn.weight[:co], bn.bias[:co], bn.running_mean[:co], bn.running_var[:co], bn.eps)

    def forward(self, x: torch.Tensor, width_index: int) -> torch.Tensor:
        w, b, g = self.sliced(width_index)
        if x.shape[1] != w.shape[1] * g:
            raise ValueError(f"{self.spec['name']}: input has {x.shape[1]} channels, expected {w.shape[1] * g}")
        y = F.conv2d(x, w, b, self.stride, self.padding, self.dilation, g)
        p = self.bn_params(width_index)
        if p is not None:
            gamma, beta, mean, var, eps = p
            y = F.batch_norm(y, mean, var, gamma, beta, training=False, eps=eps)
        act = self.spec.get("activation")
        if act == "relu":
            y = F.relu(y)
        elif act == "relu6":
            y = F.relu6(y)
        return y


class SlimNet(nn.Module):
    """The architecture as a PyTorch module; ``forward(x, width_index)``. Built in eval mode."""

    def __init__(self, arch: dict[str, Any]):
        super().__init__()
        validate_arch(arch)
        self.arch = arch
        self.layers = nn.ModuleDict({spec["name"]: SlimConv2d(spec, arch) for spec in arch["layers"]})
        self.eval()

    @property
    def widths(self) -> list[float]:
        return list(self.arch["widths"])

    def forward_all(self, x: torch.Tensor, width_index: int) -> dict[str, torch.Tensor]:
        """Every tensor (the input and each layer's output, after its activation)."""
        tensors = {self.arch["input"]["name"]: x}
        for spec in self.arch["layers"]:
            tensors[spec["name"]] = self.layers[spec["name"]](tensors[spec["input"]], width_index)
        return tensors

    def forward(self, x: torch.Tensor, width_index: int) -> torch.Tensor:
        return self.forward_all(x, width_index)[self.arch["output"]]
