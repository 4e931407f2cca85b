#!/usr/bin/env python3
"""The deep-fusion model's agent as an int8 ONNX graph, for ONNX Runtime to time against the engine.

Reads only the model file (no checkpoint, no data) and writes the graph of exactly what a SlimSplit
agent runs per frame after the BEV grid, from the file's own int8 tensors:

    QuantizeLinear -> encoder at full width (4 QLinearConv) -> backbone (4 QLinearConv)
      -> own head's shared layer (QLinearConv) -> DequantizeLinear -> 1x1 heads (float Conv):
         heatmap, offset, size, yaw
      backbone codes -> DequantizeLinear -> 1x1 compression (float Conv): the 16-channel message

It then checks, on the parity fixture (Tests/Fixtures/engine/deep_io.safetensors), that ONNX Runtime's
backbone and head codes from the fixture's encoder maps are bit-identical to the codes the engine is
tested against (`backbone_q`, `head_q`: DeepParityTests), so the graph and the engine compute the same.

    python training/export_deep_onnx.py [--model Models/slimsplit-deep.safetensors]
        [--out Models/slimsplit-deep-agent-int8.onnx]
        [--agent-fixture Tests/Fixtures/engine/deep_agent_ort.safetensors --bev SHARD.safetensors]

Benchmarks/peers_ort.py times it (`--model deep`). Needs numpy, onnx, onnxruntime, safetensors and the
training package (for its ONNX builders).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors import safe_open
from safetensors.numpy import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from slimsplit_train.onnx_build import _finish, _qconv_node, _scalar, ort_session  # noqa: E402
from slimsplit_train.arch import layer_channels  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
HEADS = ("heatmap", "offset", "size", "yaw")


def agent_layers(deep: dict) -> list[tuple[str, int]]:
    """(tensor prefix, dilation) of the agent's int8 layers after the encoder, in order."""
    return [(f"deep.agent.backbone.{k}.int8", d) for k, d in enumerate(deep["backbone_dilations"])] + \
        [("deep.agent.head.shared.int8", 1)]


def build(arch: dict, t: dict[str, np.ndarray], with_encoder: bool = True) -> onnx.ModelProto:
    """The agent graph; without the encoder it starts from the encoder's output codes (uint8)."""
    wi = len(arch["widths"]) - 1
    deep = arch["deep"]
    h, w = arch["input"]["height"], arch["input"]["width"]
    gh, gw = deep["grid"]["height"], deep["grid"]["width"]
    inits: list = []
    nodes: list = []
    if with_encoder:
        inp = arch["input"]["name"]
        qp = t[f"{inp}.int8.{wi}.qparams"]
        inits += [_scalar("input_scale", qp[0], np.float32), _scalar("input_zp", int(qp[1]), np.uint8)]
        nodes.append(helper.make_node("QuantizeLinear", [inp, "input_scale", "input_zp"], [f"{inp}_q"]))
        names = {inp: f"{inp}_q"}
        for spec in arch["layers"]:
            name = spec["name"]
            names[name] = f"{name}_q"
            nodes.append(_qconv_node(
                f"{name}_", names[spec["input"]], t[f"{spec['input']}.int8.{wi}.qparams"],
                t[f"{name}.int8.{wi}.weight"], t[f"{name}.int8.{wi}.weight_scale"], t[f"{name}.int8.{wi}.bias"],
                t[f"{name}.int8.{wi}.qparams"], names[name], spec["stride"], spec["padding"], spec["dilation"],
                layer_channels(arch, spec, wi)[2], inits))
        x = names[arch["output"]]
        x_info = helper.make_tensor_value_info(inp, TensorProto.FLOAT, [1, arch["input"]["channels"], h, w])
    else:
        x = "encoder_q"
        x_info = helper.make_tensor_value_info(x, TensorProto.UINT8, [1, deep["input_channels"], gh, gw])
    qp = t["deep.agent.int8.input.qparams"]
    outs = []
    codes = []  # (output name, qparams) of each int8 layer
    for name, d in agent_layers(deep):
        y_qp = t[f"{name}.qparams"]
        nodes.append(_qconv_node(f"{name}_", x, qp, t[f"{name}.weight"], t[f"{name}.weight_scale"], t[f"{name}.bias"],
                                 y_qp, f"{name}_q", (1, 1), (d, d), (d, d), 1, inits))
        x, qp = f"{name}_q", y_qp
        codes.append((x, qp))
    backbone, head_q = codes[-2], x  # the backbone's last layer; the head's shared layer
    for src, (codes, p) in (("backbone", backbone), ("hidden", (head_q, qp))):
        inits += [_scalar(f"{src}_scale", p[0], np.float32), _scalar(f"{src}_zp", int(p[1]), np.uint8)]
        nodes.append(helper.make_node("DequantizeLinear", [codes, f"{src}_scale", f"{src}_zp"], [src]))
    for name, src in [(f"head.{n}", "hidden") for n in HEADS] + [("compress", "backbone")]:
        wt, b = t[f"deep.agent.{name}.weight"], t[f"deep.agent.{name}.bias"]
        inits += [numpy_helper.from_array(np.ascontiguousarray(wt, np.float32), f"{name}_w"),
                  numpy_helper.from_array(np.ascontiguousarray(b, np.float32), f"{name}_b")]
        out = name.split(".")[-1]
        nodes.append(helper.make_node("Conv", [src, f"{name}_w", f"{name}_b"], [out], kernel_shape=[1, 1]))
        outs.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, wt.shape[0], gh, gw]))
    outs += [helper.make_tensor_value_info(c, TensorProto.UINT8, [1, n, gh, gw])
             for c, n in ((backbone[0], deep["backbone_channels"]), (head_q, deep["head_channels"]))]
    graph = helper.make_graph(nodes, f"{arch['name']}_agent_int8", [x_info], outs, initializer=inits)
    return _finish(graph)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ROOT / "Models/slimsplit-deep.safetensors"))
    ap.add_argument("--out", default=str(ROOT / "Models/slimsplit-deep-agent-int8.onnx"))
    ap.add_argument("--fixture", default=str(ROOT / "Tests/Fixtures/engine/deep_io.safetensors"),
                    help="the engine's deep parity fixture, checked first")
    ap.add_argument("--agent-fixture", default="",
                    help="also write ONNX Runtime's agent outputs on one BEV here (Tests/Fixtures/engine/deep_agent_ort.safetensors)")
    ap.add_argument("--bev", default="", help="with --agent-fixture: a dataset shard (slimsplit dataset export) to take the BEV from")
    a = ap.parse_args()
    with safe_open(a.model, "np") as f:
        arch = json.loads(f.metadata()["architecture"])
    if "deep" not in arch:
        sys.exit(f"export_deep_onnx: {a.model} is not a deep-fusion model (no architecture.deep)")
    t = load_file(a.model)
    # Parity on the fixture: ORT from the encoder codes against the codes the engine is tested on.
    io = load_file(a.fixture)
    qp = t["deep.agent.int8.input.qparams"]
    s = ort_session(build(arch, t, with_encoder=False))
    names = [o.name for o in s.get_outputs()]
    for k in range(io["features"].shape[0]):
        codes = np.clip(np.round(io["features"][k:k + 1] / qp[0]) + qp[1], 0, 255).astype(np.uint8)
        got = dict(zip(names, s.run(None, {"encoder_q": codes})))
        last = len(arch["deep"]["backbone_dilations"]) - 1
        for want, name in (("backbone_q", f"deep.agent.backbone.{last}.int8_q"),
                           ("head_q", "deep.agent.head.shared.int8_q")):
            diff = int(np.count_nonzero(got[name] != io[want][k:k + 1]))
            if diff:
                sys.exit(f"export_deep_onnx: agent {k} {want}: {diff} codes differ from the fixture")
        print(f"agent {k}: ONNX Runtime's backbone and head codes equal the fixture's (bit-exact)")
    m = build(arch, t)
    onnx.save(m, a.out)
    print(f"wrote {a.out} ({Path(a.out).stat().st_size} bytes)")
    if a.agent_fixture:
        write_agent_fixture(arch, t, m, Path(a.bev), Path(a.agent_fixture))
    return 0


def write_agent_fixture(arch: dict, t: dict[str, np.ndarray], m: onnx.ModelProto, shard: Path, out: Path) -> None:
    """What ONNX Runtime computes from one BEV grid (the busiest sample of a dataset shard, which
    SlimSplit's featurizer wrote), for the engine to match (DeepParityTests) and for CI to check
    against ONNX Runtime again (Tests/interop): the grid as its int8 input codes (a float grid that
    quantizes to exactly them is (q - zero point) x scale), the backbone's and the head's output
    codes, and the own head's float outputs."""
    from safetensors.numpy import save_file
    wi = len(arch["widths"]) - 1
    bev = load_file(str(shard))["bev"].astype(np.float32)
    k = int(np.argmax((np.abs(bev).sum(1) > 0).reshape(len(bev), -1).sum(1)))
    qp = t[f"{arch['input']['name']}.int8.{wi}.qparams"]
    q = np.clip(np.round(bev[k:k + 1] / qp[0]) + qp[1], 0, 255).astype(np.uint8)
    x = ((q.astype(np.float32) - qp[1]) * qp[0]).astype(np.float32)
    s = ort_session(m)
    got = dict(zip([o.name for o in s.get_outputs()], s.run(None, {arch["input"]["name"]: x})))
    last = len(arch["deep"]["backbone_dilations"]) - 1
    fx = {"input_q": q, "input_qparams": qp.astype(np.float32),
          "backbone_q": got[f"deep.agent.backbone.{last}.int8_q"], "head_q": got["deep.agent.head.shared.int8_q"]}
    fx.update({f"head.{n}": got[n] for n in HEADS})
    save_file({n: np.ascontiguousarray(v) for n, v in fx.items()}, str(out),
              metadata={"source": f"{shard.name} sample {k}", "onnx": "slimsplit-deep-agent-int8.onnx"})
    occupied = float((np.abs(bev[k]).sum(0) > 0).mean())
    print(f"wrote {out} ({out.stat().st_size} bytes; {shard.name} sample {k}, {occupied:.1%} of cells occupied)")


if __name__ == "__main__":
    sys.exit(main())
