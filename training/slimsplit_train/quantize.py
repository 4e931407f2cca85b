"""Post-training int8 quantization of a SlimNet, one set per width (docs/model-format.md).

Per width index i:
  * BN is folded into each conv on the active channels:
        w' = w * gamma / sqrt(var + eps)             (per output channel)
        b' = (b - mean) * gamma / sqrt(var + eps) + beta
  * activation ranges come from running the float model on calibration inputs; uint8 asymmetric:
        lo = min(0, min), hi = max(0, max), scale = (hi - lo) / 255 (1 if 0),
        zp = round_half_even(-lo / scale) clamped to [0, 255]        (after ReLU lo = 0, so zp = 0)
  * weights symmetric per output channel:
        scale_c = max|w'_c| / 127 (1 if 0), q = round_half_even(w' / scale_c) clamped to [-127, 127]
        bias_q  = round_half_even(b' / (x_scale * scale_c)) as int32
    (scale_c, w' / scale_c are float32 operations; the bias division is done in float64 on the
    float32 values.)

``qlinearconv_ref`` is a numpy QLinearConv with ONNX Runtime's requantization (float32 multiplier
x_scale * w_scale[c] / y_scale, float32 product, round half to even, + zp, saturate).
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch

from .arch import SlimNet, layer_channels

QMIN, QMAX = 0, 255  # activations: uint8
WMAX = 127  # weights: int8 in [-127, 127]


def fold_bn(net: SlimNet, layer_name: str, width_index: int) -> tuple[np.ndarray, np.ndarray]:
    """BN-folded float32 (weight [co, ci/g, kh, kw], bias [co]) of a layer at a width."""
    layer = net.layers[layer_name]
    with torch.no_grad():
        w, b, _ = layer.sliced(width_index)
        w = w.double()
        b = b.double() if b is not None else torch.zeros(w.shape[0], dtype=torch.float64)
        p = layer.bn_params(width_index)
        if p is not None:
            gamma, beta, mean, var, eps = p
            k = gamma.double() / torch.sqrt(var.double() + eps)
            w = w * k.view(-1, 1, 1, 1)
            b = (b - mean.double()) * k + beta.double()
    return w.float().numpy().copy(), b.float().numpy().copy()


def qparams_from_range(lo: float, hi: float) -> np.ndarray:
    """[scale, zero_point] (float32) of a uint8 asymmetric quantizer covering [lo, hi] and 0."""
    lo = min(0.0, float(lo))
    hi = max(0.0, float(hi))
    scale = np.float32((hi - lo) / (QMAX - QMIN))
    if scale == 0 or not np.isfinite(scale):
        scale = np.float32(1.0)
    zp = np.clip(np.rint(np.float32(-lo) / scale), QMIN, QMAX) + np.float32(0.0)  # never -0.0
    return np.array([scale, zp], dtype=np.float32)


def quantize_tensor(x: np.ndarray, qparams: np.ndarray) -> np.ndarray:
    """uint8 q = saturate(round_half_even(x / scale) + zp), in float32 (ONNX QuantizeLinear)."""
    scale, zp = np.float32(qparams[0]), np.float32(qparams[1])
    q = np.rint(x.astype(np.float32) / scale) + zp
    return np.clip(q, QMIN, QMAX).astype(np.uint8)


def dequantize_tensor(q: np.ndarray, qparams: np.ndarray) -> np.ndarray:
    return (q.astype(np.float32) - np.float32(qparams[1])) * np.float32(qparams[0])


def quantize_weights(w: np.ndarray, b: np.ndarray, x_scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(int8 weight, float32 weight_scale [co], int32 bias) of a BN-folded float conv."""
    w = w.astype(np.float32)
    co = w.shape[0]
    amax = np.abs(w.reshape(co, -1)).max(axis=1).astype(np.float32)
    scale = (amax / np.float32(WMAX)).astype(np.float32)
    scale[scale == 0] = np.float32(1.0)
    q = np.rint(w / scale.reshape(-1, 1, 1, 1))
    q = np.clip(q, -WMAX, WMAX).astype(np.int8)
    denom = np.float64(np.float32(x_scale)) * scale.astype(np.float64)
    bq = np.rint(b.astype(np.float64) / denom)
    bq = np.clip(bq, np.iinfo(np.int32).min, np.iinfo(np.int32).max).astype(np.int32)
    return q, scale, bq


def calibrate(net: SlimNet, inputs: Iterable[torch.Tensor], width_index: int) -> dict[str, np.ndarray]:
    """qparams of every tensor (input and layer outputs) at a width from min/max over ``inputs``."""
    lo: dict[str, float] = {}
    hi: dict[str, float] = {}
    with torch.no_grad():
        for x in inputs:
            for name, t in net.forward_all(x, width_index).items():
                lo[name] = min(lo.get(name, np.inf), float(t.min()))
                hi[name] = max(hi.get(name, -np.inf), float(t.max()))
    return {name: qparams_from_range(lo[name], hi[name]) for name in lo}


def quantize_net(net: SlimNet, calib_inputs: list[torch.Tensor]) -> dict[str, np.ndarray]:
    """All int8 tensors (model-format names) for every width."""
    arch = net.arch
    out: dict[str, np.ndarray] = {}
    for i in range(len(arch["widths"])):
        qp = calibrate(net, calib_inputs, i)
        for name, p in qp.items():
            out[f"{name}.int8.{i}.qparams"] = p
        for spec in arch["layers"]:
            name = spec["name"]
            w, b = fold_bn(net, name, i)
            q, s, bq = quantize_weights(w, b, qp[spec["input"]][0])
            out[f"{name}.int8.{i}.weight"] = q
            out[f"{name}.int8.{i}.weight_scale"] = s
            out[f"{name}.int8.{i}.bias"] = bq
    return out


# ---------------------------------------------------------------------------------------------
# numpy reference of ONNX QLinearConv (uint8 x / y, int8 per-channel symmetric w, int32 bias)


def qconv_accumulate(
    x_q: np.ndarray, x_zp: int, w_q: np.ndarray, bias_q: np.ndarray | None,
    stride: Iterable[int], padding: Iterable[int], dilation: Iterable[int], groups: int,
) -> np.ndarray:
    """int64 accumulator [1, O, Ho, Wo] = sum((x_q - x_zp) * w_q) + bias_q, zero padding in the
    shifted domain (= padding x with x_zp)."""
    sh, sw = stride
    ph, pw = padding
    dh, dw = dilation
    n, c, h, w = x_q.shape
    o, cpg, kh, kw = w_q.shape
    assert n == 1 and c == cpg * groups and o % groups == 0
    xs = x_q.astype(np.int64) - int(x_zp)
    xs = np.pad(xs, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    acc = np.zeros((1, o, ho, wo), dtype=np.int64)
    opg = o // groups
    wq = w_q.astype(np.int64)
    for g in range(groups):
        xg = xs[0, g * cpg:(g + 1) * cpg]
        wg = wq[g * opg:(g + 1) * opg]
        for i in range(kh):
            for j in range(kw):
                patch = xg[:, i * dh: i * dh + sh * (ho - 1) + 1: sh, j * dw: j * dw + sw * (wo - 1) + 1: sw]
                acc[0, g * opg:(g + 1) * opg] += np.einsum("oc,chw->ohw", wg[:, :, i, j], patch)
    if bias_q is not None:
        acc += bias_q.astype(np.int64).reshape(1, -1, 1, 1)
    return acc


def requantize(acc: np.ndarray, x_scale: float, w_scale: np.ndarray, y_scale: float, y_zp: int,
               multiplier_dtype=np.float32) -> np.ndarray:
    """ONNX Runtime's requantization: float32 multiplier, float32 product, round half even."""
    ft = multiplier_dtype
    m = (ft(x_scale) * w_scale.astype(ft)) / ft(y_scale)
    # |acc| >= 2**24 would round in the float32 conversion, as it does in ONNX Runtime
    v = acc.astype(ft) * m.reshape(1, -1, 1, 1).astype(ft)
    return np.clip(np.rint(v) + y_zp, QMIN, QMAX).astype(np.uint8)


def qlinearconv_ref(x_q, x_qp, w_q, w_scale, bias_q, y_qp, stride, padding, dilation, groups,
                    multiplier_dtype=np.float32) -> np.ndarray:
    acc = qconv_accumulate(x_q, int(x_qp[1]), w_q, bias_q, stride, padding, dilation, groups)
    return requantize(acc, float(x_qp[0]), w_scale, float(y_qp[0]), int(y_qp[1]), multiplier_dtype)


def int8_chain_ref(arch: dict[str, Any], tensors: dict[str, np.ndarray], width_index: int,
                   input_q: np.ndarray) -> dict[str, np.ndarray]:
    """numpy int8 run of the whole model at a width (every tensor, uint8)."""
    i = width_index
    inp = arch["input"]["name"]
    vals = {inp: input_q}
    for spec in arch["layers"]:
        name = spec["name"]
        _, _, g = layer_channels(arch, spec, i)
        vals[name] = qlinearconv_ref(
            vals[spec["input"]], tensors[f"{spec['input']}.int8.{i}.qparams"],
            tensors[f"{name}.int8.{i}.weight"], tensors[f"{name}.int8.{i}.weight_scale"],
            tensors[f"{name}.int8.{i}.bias"], tensors[f"{name}.int8.{i}.qparams"],
            spec["stride"], spec["padding"], spec["dilation"], g)
    return vals
