"""ONNX graphs built directly (no exporter) from model-file tensors, and ONNX Runtime sessions.

* ``qlinearconv_model``: one QLinearConv (uint8 x / y, int8 per-channel w, int32 bias).
* ``int8_chain_model``: the whole model at a width as a QLinearConv chain, each layer's y_scale /
  y_zero_point = that layer's activation qparams (ReLU = saturation at zero point 0). With
  ``float_io`` the graph takes float input (QuantizeLinear) and returns float (DequantizeLinear).
* ``float_model``: the BN-folded float model at a width (Conv [+ Relu/Clip]).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .arch import layer_channels

OPSET = 17
IR_VERSION = 8


def _scalar(name: str, value, dtype) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(value, dtype=dtype), name)


def _conv_attrs(kernel, stride, padding, dilation, groups) -> dict[str, Any]:
    return dict(kernel_shape=list(kernel), strides=list(stride),
                pads=[padding[0], padding[1], padding[0], padding[1]],
                dilations=list(dilation), group=int(groups))


def conv_out_hw(h: int, w: int, kernel, stride, padding, dilation) -> tuple[int, int]:
    ho = (h + 2 * padding[0] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    return ho, wo


def _out_shape(arch: dict[str, Any], width_index: int, height: int, width: int) -> list[int]:
    hw = {arch["input"]["name"]: (height, width)}
    for spec in arch["layers"]:
        h, w = hw[spec["input"]]
        hw[spec["name"]] = conv_out_hw(h, w, spec["kernel"], spec["stride"], spec["padding"], spec["dilation"])
    out = next(s for s in arch["layers"] if s["name"] == arch["output"])
    return [1, layer_channels(arch, out, width_index)[1], *hw[arch["output"]]]


def _finish(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="slimsplit_train")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def _qconv_node(prefix: str, x: str, x_qp, w_q, w_scale, bias_q, y_qp, y: str,
                stride, padding, dilation, groups, inits: list) -> onnx.NodeProto:
    o = w_q.shape[0]
    inits += [
        _scalar(f"{prefix}x_scale", x_qp[0], np.float32),
        _scalar(f"{prefix}x_zp", int(x_qp[1]), np.uint8),
        numpy_helper.from_array(np.ascontiguousarray(w_q.astype(np.int8)), f"{prefix}w"),
        numpy_helper.from_array(np.ascontiguousarray(w_scale.astype(np.float32)), f"{prefix}w_scale"),
        numpy_helper.from_array(np.zeros(o, dtype=np.int8), f"{prefix}w_zp"),
        _scalar(f"{prefix}y_scale", y_qp[0], np.float32),
        _scalar(f"{prefix}y_zp", int(y_qp[1]), np.uint8),
    ]
    ins = [x, f"{prefix}x_scale", f"{prefix}x_zp", f"{prefix}w", f"{prefix}w_scale", f"{prefix}w_zp",
           f"{prefix}y_scale", f"{prefix}y_zp"]
    if bias_q is not None:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(bias_q.astype(np.int32)), f"{prefix}bias"))
        ins.append(f"{prefix}bias")
    return helper.make_node("QLinearConv", ins, [y], name=f"{prefix}qlinearconv",
                            **_conv_attrs(w_q.shape[2:], stride, padding, dilation, groups))


def qlinearconv_model(x_shape, x_qp, w_q, w_scale, bias_q, y_qp, stride, padding, dilation, groups) -> onnx.ModelProto:
    inits: list = []
    node = _qconv_node("", "x_q", x_qp, w_q, w_scale, bias_q, y_qp, "y_q", stride, padding, dilation, groups, inits)
    graph = helper.make_graph(
        [node], "qlinearconv",
        [helper.make_tensor_value_info("x_q", TensorProto.UINT8, list(x_shape))],
        [helper.make_tensor_value_info("y_q", TensorProto.UINT8, [1, w_q.shape[0], *conv_out_hw(
            x_shape[2], x_shape[3], w_q.shape[2:], stride, padding, dilation)])],
        initializer=inits)
    return _finish(graph)


def int8_chain_model(arch: dict[str, Any], tensors: dict[str, np.ndarray], width_index: int,
                     height: int, width: int, float_io: bool = False) -> onnx.ModelProto:
    i = width_index
    inp = arch["input"]["name"]
    cin = arch["input"]["channels"]
    inits: list = []
    nodes: list = []
    names = {inp: f"{inp}_q"}
    if float_io:
        qp = tensors[f"{inp}.int8.{i}.qparams"]
        inits += [_scalar("input_scale", qp[0], np.float32), _scalar("input_zp", int(qp[1]), np.uint8)]
        nodes.append(helper.make_node("QuantizeLinear", [inp, "input_scale", "input_zp"], [names[inp]]))
    for spec in arch["layers"]:
        name = spec["name"]
        _, _, g = layer_channels(arch, spec, i)
        names[name] = f"{name}_q"
        nodes.append(_qconv_node(
            f"{name}_", names[spec["input"]], tensors[f"{spec['input']}.int8.{i}.qparams"],
            tensors[f"{name}.int8.{i}.weight"], tensors[f"{name}.int8.{i}.weight_scale"],
            tensors[f"{name}.int8.{i}.bias"], tensors[f"{name}.int8.{i}.qparams"], names[name],
            spec["stride"], spec["padding"], spec["dilation"], g, inits))
        if spec.get("activation") == "relu6":
            raise NotImplementedError("relu6 in an int8 chain needs a clamp at 6/scale")
    out = arch["output"]
    if float_io:
        qp = tensors[f"{out}.int8.{i}.qparams"]
        inits += [_scalar("output_scale", qp[0], np.float32), _scalar("output_zp", int(qp[1]), np.uint8)]
        nodes.append(helper.make_node("DequantizeLinear", [names[out], "output_scale", "output_zp"], [out]))
        x_info = helper.make_tensor_value_info(inp, TensorProto.FLOAT, [1, cin, height, width])
        y_info = helper.make_tensor_value_info(out, TensorProto.FLOAT, _out_shape(arch, i, height, width))
    else:
        x_info = helper.make_tensor_value_info(names[inp], TensorProto.UINT8, [1, cin, height, width])
        y_info = helper.make_tensor_value_info(names[out], TensorProto.UINT8, _out_shape(arch, i, height, width))
    graph = helper.make_graph(nodes, f"{arch['name']}_int8_w{i}", [x_info], [y_info], initializer=inits)
    return _finish(graph)


def float_model(arch: dict[str, Any], folded: dict[str, tuple[np.ndarray, np.ndarray]], width_index: int,
                height: int, width: int) -> onnx.ModelProto:
    """``folded``: layer name -> (BN-folded weight, bias) at this width (quantize.fold_bn)."""
    i = width_index
    inp = arch["input"]["name"]
    inits: list = []
    nodes: list = []
    for spec in arch["layers"]:
        name = spec["name"]
        _, _, g = layer_channels(arch, spec, i)
        w, b = folded[name]
        inits += [numpy_helper.from_array(np.ascontiguousarray(w.astype(np.float32)), f"{name}_w"),
                  numpy_helper.from_array(np.ascontiguousarray(b.astype(np.float32)), f"{name}_b")]
        act = spec.get("activation")
        conv_out = name if act is None else f"{name}_conv"
        nodes.append(helper.make_node("Conv", [spec["input"], f"{name}_w", f"{name}_b"], [conv_out], name=name,
                                      **_conv_attrs(w.shape[2:], spec["stride"], spec["padding"],
                                                    spec["dilation"], g)))
        if act == "relu":
            nodes.append(helper.make_node("Relu", [conv_out], [name]))
        elif act == "relu6":
            inits += [_scalar(f"{name}_lo", 0.0, np.float32), _scalar(f"{name}_hi", 6.0, np.float32)]
            nodes.append(helper.make_node("Clip", [conv_out, f"{name}_lo", f"{name}_hi"], [name]))
    cin = arch["input"]["channels"]
    graph = helper.make_graph(
        nodes, f"{arch['name']}_float_w{i}",
        [helper.make_tensor_value_info(inp, TensorProto.FLOAT, [1, cin, height, width])],
        [helper.make_tensor_value_info(arch["output"], TensorProto.FLOAT, _out_shape(arch, i, height, width))],
        initializer=inits)
    return _finish(graph)


def ort_session(model: onnx.ModelProto, threads: int = 1):
    """CPU execution provider, ``threads`` intra-op threads, 1 inter-op, sequential, default
    graph optimization level."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
