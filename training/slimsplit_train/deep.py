"""Deep fusion (issue 12 experiment): the agent runs the whole single-agent detector, and the
message carries its backbone features, compressed and only where they matter.

Agent j, in its own grid (nothing is warped before the backbone):
    f_j = encoder(BEV_j)                      64 x 32 x 32 (2 m cells), the shipped encoder
    D_j = backbone(f_j)                       96 x 32 x 32
    local_j = head(D_j)                       the agent's own detections (single agent; late
                                              fusion sends these as boxes)
    m_j = quantize(compress(D_j))             K x 32 x 32, K << 96, LSQ per channel (8/4/2 bit)
    sent_j = dilate3x3(sigmoid(local_j.heatmap) > tau)   the cells worth sending
Server, for every ego e:
    x_j = rotate(decompress(m_j), yaw_e - yaw_j)   pose-conditioned 1x1 mixing, in j's grid
    warp x_j and sent_j into e's grid; attention over the agents that sent a cell (the others and
    cells no one sent are 0); fuse conv 3x3; head -> e's detections.

Why: a warp of shallow 2 m features blurs what the backbone needs; here each agent's backbone
sees its own grid, so the fused head can reproduce an agent's own detection (what late fusion
merges) and add what the other views contribute. The server's work per ego is a fuse conv and
the head, not a whole backbone; the bytes are set by K, the bits and tau, not by the encoder.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .arch import SlimNet
from .coop import ROT_TERMS, FeatureQuant, decode, encoder_forward, frame_slots, rot_terms


GEOMETRY_CHANNELS = 7


class ConvReLU(nn.Sequential):
    def __init__(self, cin, cout, k=3, dilation=1, relu=True):
        mods = [nn.Conv2d(cin, cout, k, padding=dilation * (k // 2), dilation=dilation)]
        if relu:
            mods.append(nn.ReLU(inplace=True))
        super().__init__(*mods)


class Head(nn.Module):
    def __init__(self, cin=96, ch=64, classes=1):
        super().__init__()
        self.shared = ConvReLU(cin, ch)
        self.heatmap = nn.Conv2d(ch, classes, 1)
        self.offset = nn.Conv2d(ch, 2, 1)
        self.size = nn.Conv2d(ch, 2, 1)
        self.yaw = nn.Conv2d(ch, 2, 1)
        nn.init.constant_(self.heatmap.bias, -2.19)

    def forward(self, x):
        y = self.shared(x)
        return {"heatmap": self.heatmap(y), "offset": self.offset(y), "size": self.size(y), "yaw": self.yaw(y)}


class DeepModel(nn.Module):
    def __init__(self, arch: dict[str, Any], msg_channels: int = 16, backbone: int = 96, head: int = 64,
                 geometry: bool = False):
        super().__init__()
        self.arch = arch
        self.geometry = geometry
        # How every head's outputs are decoded (coop.decode's rule, the exported file's decode.peaks):
        # every cell above the threshold, NMS separating neighbours (docs/evaluation.md, "Decoding").
        self.peaks = "above_threshold"
        # How detections are merged (coop.merge_boxes, the file's decode.merge): late fusion's
        # boxes, and the fused head's with the agents' current boxes read from their messages, are
        # averaged per object, not only suppressed (docs/evaluation.md, "Merging").
        self.merge = "weighted"
        G = GEOMETRY_CHANNELS if geometry else 0
        self.encoder = SlimNet(arch)
        C = 64
        self.C, self.B, self.K = C, backbone, msg_channels
        self.backbone = nn.Sequential(ConvReLU(C, backbone), ConvReLU(backbone, backbone),
                                      ConvReLU(backbone, backbone, dilation=2), ConvReLU(backbone, backbone))
        self.local_head = Head(backbone, head)
        self.compress = nn.Conv2d(backbone, msg_channels, 1)
        self.quant = FeatureQuant([1.0], msg_channels)
        self.decompress = ConvReLU(msg_channels, backbone, 1)
        self.rotate_conv = nn.Conv2d(len(ROT_TERMS) * backbone, backbone, 1)
        with torch.no_grad():
            self.rotate_conv.weight.zero_()
            self.rotate_conv.weight[:, :backbone, 0, 0] = torch.eye(backbone)
            self.rotate_conv.bias.zero_()
        self.score = nn.Conv2d(backbone + G, 1, 1)
        self.fuse_conv = ConvReLU(backbone + G, backbone)
        self.head = Head(backbone, head)
        # the server's reading of each agent's own boxes from its message, in the agent's grid
        self.peer_head = Head(backbone, head) if geometry else None

    # --- agent side
    def agent(self, bev: torch.Tensor, train: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        f = encoder_forward(self.encoder, bev, len(self.arch["widths"]) - 1, train)
        d = self.backbone(f)
        return d, self.local_head(d)

    def message(self, d: torch.Tensor, bits: int | None) -> torch.Tensor:
        return self.quant(self.compress(d), 0, bits)

    @staticmethod
    def selection(local: dict[str, torch.Tensor], tau: float | None) -> torch.Tensor:
        """[A, 1, H, W] float 0/1: cells an agent sends (all when tau is None)."""
        hm = local["heatmap"].detach()
        if tau is None:
            return torch.ones_like(hm)
        s = (torch.sigmoid(hm) > tau).float()
        return F.max_pool2d(s, 3, 1, 1)

    # --- server side
    def rotate(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        c, s = theta[:, 0, 0], theta[:, 1, 0]
        terms = rot_terms(c, s).to(x.dtype)
        B = x.shape[1]
        w = self.rotate_conv.weight[:, :, 0, 0].view(B, len(ROT_TERMS), B)
        wa = torch.einsum("okc,ak->aoc", w, terms)
        return torch.einsum("aoc,achw->aohw", wa, x) + self.rotate_conv.bias.view(1, -1, 1, 1)

    def server(self, m: torch.Tensor, sent: torch.Tensor, theta: torch.Tensor, owner: torch.Tensor,
               n_frames: int) -> dict[str, torch.Tensor]:
        """m [A, K, H, W] received (dequantized) messages, sent [A, 1, H, W], theta [A, 2, 3] (ego grid ->
        agent grid), owner [A] frame index -> head outputs [n_frames, ...] in each ego's grid. Only the
        sent cells of ``m`` are read."""
        xd = self.decompress(m) * sent                       # a cell not sent reads 0
        x = self.rotate(xd, theta) * sent
        if self.geometry:
            x = torch.cat([x, self.boxes_in_ego(self.peer_head(xd), theta) * sent], 1)   # = peer_boxes
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        wx = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        valid = F.grid_sample(sent, grid, mode="bilinear", padding_mode="zeros", align_corners=False) > 0.5
        A, B, H, W = wx.shape
        slot, nmax = frame_slots(owner, n_frames)
        feats = wx.new_zeros(n_frames, nmax, B, H, W)
        feats[owner, slot] = wx
        scores = wx.new_full((n_frames, nmax, 1, H, W), float("-inf"))
        scores[owner, slot] = self.score(wx).masked_fill(~valid, float("-inf"))
        wts = torch.nan_to_num(torch.softmax(scores, dim=1), nan=0.0)
        fused = (wts * feats).sum(1)
        if self.geometry:
            fused = self.cell_relative(fused)
        return self.head(self.fuse_conv(fused))

    def peer_boxes(self, m: torch.Tensor, sent: torch.Tensor) -> dict[str, torch.Tensor]:
        """The server's reading of each agent's own head outputs from its message, in its own grid."""
        return self.peer_head(self.decompress(m) * sent)

    @torch.no_grad()
    def read_boxes(self, m: torch.Tensor, sent: torch.Tensor) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each agent's boxes as the server reads them from its message (peer head, sent cells
        only), decoded as the file says: what ``decode.merge: weighted`` merges the fused boxes with."""
        p = self.peer_boxes(m, sent)
        p["heatmap"] = p["heatmap"].masked_fill(sent < 0.5, -30.0)
        return decode(p, peaks=self.peaks)

    @staticmethod
    def boxes_in_ego(p: dict[str, torch.Tensor], theta: torch.Tensor) -> torch.Tensor:
        """Per cell of agent j's grid, the box its head predicts there, in the ego's frame:
        [A, 7, H, W] = (sigmoid heatmap, centre x, y in metres / 32, log l, log w, sin 2psi, cos 2psi),
        the centre and the axis turned into the ego frame (theta: ego grid -> agent grid)."""
        A, _, H, W = p["heatmap"].shape
        cols = torch.arange(W, dtype=p["offset"].dtype).view(1, 1, W)
        rows = torch.arange(H, dtype=p["offset"].dtype).view(1, H, 1)
        cx = ((cols + p["offset"][:, 0]) * 2 / W - 1)           # normalized (metres / 32) in j's grid
        cy = ((rows + p["offset"][:, 1]) * 2 / H - 1)
        R = theta[:, :, :2].view(A, 2, 2, 1, 1)
        t = theta[:, :, 2].view(A, 2, 1, 1)
        dx, dy = cx - t[:, 0], cy - t[:, 1]
        ex = R[:, 0, 0] * dx + R[:, 1, 0] * dy                  # R^T (c - t)
        ey = R[:, 0, 1] * dx + R[:, 1, 1] * dy
        c, s = theta[:, 0, 0].view(A, 1, 1), theta[:, 1, 0].view(A, 1, 1)   # a = yaw_e - yaw_j
        c2, s2 = c * c - s * s, 2 * s * c
        ys, yc = p["yaw"][:, 0], p["yaw"][:, 1]
        return torch.stack([torch.sigmoid(p["heatmap"][:, 0]), ex, ey, p["size"][:, 0], p["size"][:, 1],
                            ys * c2 - yc * s2, yc * c2 + ys * s2], 1)

    def cell_relative(self, fused: torch.Tensor) -> torch.Tensor:
        """The fused centre channels (normalized ego coordinates) as offsets from each ego cell's
        corner, in cells (what the head's offset predicts); 0 where no agent sent the cell."""
        B = self.B
        H, W = fused.shape[-2:]
        cols = torch.arange(W, dtype=fused.dtype).view(1, 1, W)
        rows = torch.arange(H, dtype=fused.dtype).view(1, H, 1)
        hm = fused[:, B:B + 1]
        has = (hm > 0).to(fused.dtype)
        ox = ((fused[:, B + 1] + 1) * W / 2 - cols) * has[:, 0]
        oy = ((fused[:, B + 2] + 1) * H / 2 - rows) * has[:, 0]
        return torch.cat([fused[:, :B + 1], ox[:, None], oy[:, None], fused[:, B + 3:]], 1)


def init_from_shipped(model: DeepModel, tensors: dict[str, np.ndarray], encoder: SlimNet) -> None:
    """Warm start from the shipped model file: its encoder, its (BN-folded) server backbone as the
    agent's backbone, its head as both heads."""
    model.encoder = encoder
    with torch.no_grad():
        def put(conv, name):
            conv.weight.copy_(torch.from_numpy(tensors[f"{name}.weight"]))
            conv.bias.copy_(torch.from_numpy(tensors[f"{name}.bias"]))
        for k, blk in enumerate(model.backbone):
            put(blk[0], f"server.backbone.{k}")
        for h in (model.local_head, model.head) + ((model.peer_head,) if model.peer_head is not None else ()):
            put(h.shared[0], "server.head.shared")
            for n in ("heatmap", "offset", "size", "yaw"):
                put(getattr(h, n), f"server.head.{n}")
        # the fuse conv starts as the identity (3x3 centre tap)
        model.fuse_conv[0].weight.zero_()
        model.fuse_conv[0].weight[:, :model.B, 1, 1] = torch.eye(model.B)
        model.fuse_conv[0].bias.zero_()


def server_macs(model: DeepModel, agents: int, sent_fraction: float = 1.0) -> dict[str, float]:
    """The server's multiply-accumulates per agent-frame when every one of ``agents`` agents is an
    ego (32 x 32 grid, dense convolutions; ``sent_fraction`` scales the per-agent work that only
    sent cells need)."""
    hw = 32 * 32
    B, K, G = model.B, model.K, (GEOMETRY_CHANNELS if model.geometry else 0)
    own = hw * sent_fraction * (K * B + (9 * B * 64 + 64 * 7 if model.geometry else 0))  # once per agent-frame
    pair = hw * sent_fraction * B * B                                                    # rotate, per (ego, agent)
    ego = hw * (9 * (B + G) * B + 9 * B * 64 + 64 * 7)                                   # fuse conv + head
    return {"per_agent_frame": own, "per_pair": pair, "per_ego": ego, "total": own + agents * pair + ego}


def save_weights(model: DeepModel, path, metadata: dict[str, str]) -> None:
    """The model's weights and buffers (float32) as a deterministic safetensors file; metadata
    ``deep`` holds what ``load_weights`` needs to rebuild the model."""
    import json
    from .st_write import save_file
    t = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    meta = dict(metadata)
    meta["deep"] = json.dumps({"arch": model.arch, "msg_channels": model.K, "geometry": model.geometry},
                              separators=(",", ":"))
    save_file(t, path, metadata=meta)


def load_weights(path) -> DeepModel:
    """A model written by ``save_weights`` (or a training checkpoint ``ckpt.pt``), in eval mode."""
    import json
    if str(path).endswith(".pt"):
        ck = torch.load(path, map_location="cpu", weights_only=False)
        model = DeepModel(ck["arch"], ck["msg_channels"], geometry=ck.get("geometry", False))
        model.load_state_dict(ck["state"])
    else:
        from safetensors import safe_open
        with safe_open(str(path), framework="numpy") as f:
            d = json.loads(f.metadata()["deep"])
            state = {k: torch.from_numpy(f.get_tensor(k)) for k in f.keys()}
        model = DeepModel(d["arch"], d["msg_channels"], geometry=d["geometry"])
        model.load_state_dict(state)
    return model.eval()


__all__ = ["DeepModel", "init_from_shipped", "load_weights", "server_macs", "save_weights"]
