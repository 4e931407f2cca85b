"""Cooperative BEV vehicle detection: data, slimmable encoder training forward, transmitted-feature
quantization (LSQ-style, per channel, per width and bit depth), the server (zero fill, warp,
max / attention fusion, backbone, CenterPoint-style head), targets, losses, decoding, rotated NMS
and rotated-box IoU.

Frames and grids (docs/dataset-format.md): each agent's BEV is 8 x 128 x 128, column = x (forward),
row = y (left), 0.5 m cells over +-32 m. The encoder output (the transmitted map) is 32 x 32 at 2 m.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open

from .arch import SlimNet, active_channels

GRID = 32.0          # half extent of the grid, metres
FEAT_HW = 32         # transmitted map size
FEAT_CELL = 2.0      # metres per transmitted cell
BITS = (8, 4, 2)
ROT_TERMS = ("1", "cos a", "sin a", "cos 2a", "sin 2a")   # the server's pose-conditioned mixing terms


def rot_terms(c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """[A] cos a, sin a -> [A, 5] (1, cos a, sin a, cos 2a, sin 2a)."""
    return torch.stack([torch.ones_like(c), c, s, c * c - s * s, 2 * s * c], 1)


# ---------------------------------------------------------------------------------------------
# data


def quat_yaw(q: np.ndarray) -> np.ndarray:
    qx, qy, qz, qw = q[..., 3], q[..., 4], q[..., 5], q[..., 6]
    return np.arctan2(2 * (qw * qz + qx * qy), 1 - 2 * (qy * qy + qz * qz))


def agent_track(name: str) -> int:
    """Track id of an agent's own vehicle (car_k -> k), -1 for a roadside unit."""
    return int(name.split("_")[1]) if name.startswith("car_") else -1


class FrameSet:
    """All frames of a folder of shards, in memory.

    ``bev``: float16 [S, 8, 128, 128]; ``frames``: list of dicts with ``rec``, ``frame``,
    ``samples`` (sample index per agent, -1 if absent), ``pose`` [A, 3] (x, y, yaw true),
    ``pose_measured`` [A, 3], ``tracks`` [A] (own-vehicle track, -1 RSU), ``boxes`` [B, 8] world
    (x, y, z, l, w, h, yaw, class), ``points`` [B, A], ``box_tracks`` [B].
    """

    def __init__(self, shard_dir: str | Path, frame_stride: int = 1, max_recordings: int | None = None):
        files = sorted(Path(shard_dir).glob("*.safetensors"))
        bevs: list[np.ndarray] = []
        frames: dict[tuple[str, int], dict[str, Any]] = {}
        n = 0
        recs: list[str] = []
        for f in files:
            with safe_open(str(f), framework="numpy") as st:
                meta = st.metadata()
                rec = Path(meta["recording"]).stem
                if rec not in recs:
                    if max_recordings is not None and len(recs) >= max_recordings:
                        continue
                    recs.append(rec)
                agents = json.loads(meta["agents"])
                sf = st.get_tensor("sample_frame")
                keep = (sf % frame_stride) == 0
                sa = st.get_tensor("sample_agent")
                pose = st.get_tensor("pose")
                posem = st.get_tensor("pose_measured")
                bw = st.get_tensor("boxes_world")
                bwf = st.get_tensor("boxes_world_frame")
                bwt = st.get_tensor("boxes_world_track")
                bwp = st.get_tensor("boxes_world_points")
                bev = st.get_tensor("bev")
                idx = np.nonzero(keep)[0]
                bevs.append(bev[idx])
                for k, s in enumerate(idx):
                    key = (rec, int(sf[s]))
                    if key not in frames:
                        m = bwf == sf[s]
                        frames[key] = dict(
                            rec=rec, frame=int(sf[s]), agents=agents,
                            samples=np.full(len(agents), -1, dtype=np.int64),
                            pose=np.zeros((len(agents), 3)), pose_measured=np.zeros((len(agents), 3)),
                            tracks=np.array([agent_track(a) for a in agents]),
                            boxes=bw[m].astype(np.float64), points=bwp[m], box_tracks=bwt[m])
                    fr = frames[key]
                    a = int(sa[s])
                    fr["samples"][a] = n + k
                    fr["pose"][a] = [pose[s, 0], pose[s, 1], quat_yaw(pose[s])]
                    fr["pose_measured"][a] = [posem[s, 0], posem[s, 1], quat_yaw(posem[s])]
                n += len(idx)
        self.bev = torch.from_numpy(np.concatenate(bevs)) if bevs else torch.zeros(0, 8, 128, 128, dtype=torch.float16)
        self.frames = sorted(frames.values(), key=lambda f: (f["rec"], f["frame"]))
        self.frames = [f for f in self.frames if (f["samples"] >= 0).all()]
        self.index = {(f["rec"], f["frame"]): i for i, f in enumerate(self.frames)}
        self.recordings = recs

    def __len__(self) -> int:
        return len(self.frames)


# ---------------------------------------------------------------------------------------------
# geometry


def rot(a):
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s], [s, c]])


def theta_ego_from(pose_e: np.ndarray, pose_j: np.ndarray) -> np.ndarray:
    """affine_grid theta [2, 3]: ego-grid normalized coords (x, y) -> agent j's normalized coords.
    p_j = R(yaw_e - yaw_j) p_e + R(-yaw_j)(t_e - t_j); normalized = metres / 32."""
    R = rot(pose_e[2] - pose_j[2])
    t = rot(-pose_j[2]) @ (pose_e[:2] - pose_j[:2]) / GRID
    return np.concatenate([R, t[:, None]], axis=1)


def boxes_to_frame(boxes: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """World boxes [B, >=7] (x, y, z, l, w, h, yaw, ...) -> the frame of ``pose`` (x, y, yaw)."""
    out = boxes.copy()
    xy = (boxes[:, :2] - pose[:2]) @ rot(pose[2])  # R(-yaw) p == p @ R(yaw)
    out[:, :2] = xy
    out[:, 6] = wrap(boxes[:, 6] - pose[2])
    return out


def wrap(a):
    return (a + np.pi) % (2 * np.pi) - np.pi


def in_grid(xy: np.ndarray, half: float = GRID) -> np.ndarray:
    return (np.abs(xy[:, 0]) < half) & (np.abs(xy[:, 1]) < half)


def box_corners(b: np.ndarray) -> np.ndarray:
    """[N, >=5] (x, y, l, w, yaw) -> corners [N, 4, 2]."""
    x, y, l, w, yaw = b[:, 0], b[:, 1], b[:, 2], b[:, 3], b[:, 4]
    c, s = np.cos(yaw), np.sin(yaw)
    dx = np.array([0.5, 0.5, -0.5, -0.5])[None] * l[:, None]
    dy = np.array([0.5, -0.5, -0.5, 0.5])[None] * w[:, None]
    px = x[:, None] + dx * c[:, None] - dy * s[:, None]
    py = y[:, None] + dx * s[:, None] + dy * c[:, None]
    return np.stack([px, py], -1)


def rotated_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """BEV IoU [Na, Nb] of boxes (x, y, l, w, yaw) (shapely polygon intersection)."""
    import shapely
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    pa = shapely.polygons(box_corners(a))
    pb = shapely.polygons(box_corners(b))
    # cheap prefilter on centre distance
    d = np.linalg.norm(a[:, None, :2] - b[None, :, :2], axis=-1)
    ra = 0.5 * np.hypot(a[:, 2], a[:, 3])
    rb = 0.5 * np.hypot(b[:, 2], b[:, 3])
    near = d < ra[:, None] + rb[None, :]
    out = np.zeros((len(a), len(b)))
    ii, jj = np.nonzero(near)
    if len(ii):
        inter = shapely.area(shapely.intersection(pa[ii], pb[jj]))
        union = a[ii, 2] * a[ii, 3] + b[jj, 2] * b[jj, 3] - inter
        out[ii, jj] = inter / np.maximum(union, 1e-9)
    return out


def rotated_nms(boxes: np.ndarray, scores: np.ndarray, thr: float = 0.1) -> np.ndarray:
    """Indices kept by greedy rotated NMS (boxes (x, y, l, w, yaw))."""
    order = np.argsort(-scores, kind="stable")
    if len(order) == 0:
        return order
    iou = rotated_iou(boxes[order], boxes[order])
    keep = []
    removed = np.zeros(len(order), dtype=bool)
    for k in range(len(order)):
        if removed[k]:
            continue
        keep.append(order[k])
        removed |= iou[k] > thr
    return np.array(keep, dtype=np.int64)


MERGE_RULES = ("nms", "weighted")
MERGE_IOU = 0.3
"""Weighted merging: the boxes of one object are those overlapping a kept box by at least this IoU."""
MERGE_MAX_AGE_S = 0.05
"""The fused head's boxes are merged only with boxes captured at most this long before the ego's."""


def moved(boxes: np.ndarray, pose: np.ndarray, pose0: np.ndarray) -> np.ndarray:
    """Boxes (x, y, l, w, yaw) of the frame at ``pose`` (x, y, yaw in the world), in the frame at ``pose0``."""
    b = boxes.copy()
    wxy = b[:, :2] @ rot(pose[2]).T + pose[:2]
    b[:, :2] = (wxy - pose0[:2]) @ rot(pose0[2])
    b[:, 4] = wrap(b[:, 4] + pose[2] - pose0[2])
    return b


def merge_boxes(kept: np.ndarray, kept_scores: np.ndarray, boxes: np.ndarray, scores: np.ndarray,
                iou: float = MERGE_IOU, nms_iou: float = 0.1):
    """Weighted box merging (``decode.merge: weighted``): every kept box (an NMS survivor) becomes
    the score-weighted mean of ``boxes`` that overlap it by at least ``iou`` (the caller includes
    the kept boxes themselves): centre, length and width averaged, the axis averaged as a double
    angle and turned back to the kept box's heading; scores unchanged; then rotated NMS again
    (moved boxes may now overlap). Several views of one object average out their errors; NMS keeps
    one view's. Returns (boxes, scores)."""
    if len(kept) == 0 or len(boxes) == 0:
        return kept, kept_scores
    ov = rotated_iou(kept, boxes)
    out = kept.copy()
    for i in range(len(kept)):
        m = ov[i] >= iou
        if not m.any():
            continue
        b, w = boxes[m], scores[m] / scores[m].sum()
        out[i, :4] = (w[:, None] * b[:, :4]).sum(0)
        axis = 0.5 * np.arctan2((w * np.sin(2 * b[:, 4])).sum(), (w * np.cos(2 * b[:, 4])).sum())
        out[i, 4] = axis + np.pi * np.round((kept[i, 4] - axis) / np.pi)
    k = rotated_nms(out, kept_scores, nms_iou)
    return out[k], kept_scores[k]


# ---------------------------------------------------------------------------------------------
# encoder forward with trainable switchable BN


def encoder_forward(net: SlimNet, x: torch.Tensor, wi: int, train: bool) -> torch.Tensor:
    t = {net.arch["input"]["name"]: x}
    for spec in net.arch["layers"]:
        layer = net.layers[spec["name"]]
        w, b, g = layer.sliced(wi)
        y = F.conv2d(t[spec["input"]], w, b, layer.stride, layer.padding, layer.dilation, g)
        bn = layer.bn[wi]
        y = F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, training=train,
                         momentum=0.1, eps=bn.eps)
        if spec.get("activation") == "relu":
            y = F.relu(y)
        t[spec["name"]] = y
    return t[net.arch["output"]]


# ---------------------------------------------------------------------------------------------
# transmitted-feature quantization


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, g):
        return g


def round_ste(x):
    return _RoundSTE.apply(x)


def grad_scale(x, s):
    return (x - x * s).detach() + x * s


class FeatureQuant(nn.Module):
    """Per-channel affine quantization of the transmitted map: for width index i and bits b,
    q = clamp(round(x / scale + zp), 0, 2^b - 1), x^ = (q - zp) * scale; zp a whole number.
    Scales and zero points are learned (LSQ: straight-through round, gradient scale
    1 / sqrt(cells * qmax)); initialised from the first batch's per-channel 0.1 / 99.9 % range."""

    def __init__(self, widths, channels: int = 64, bits=BITS):
        super().__init__()
        self.widths = list(widths)
        self.bits = tuple(bits)
        self.scale = nn.ParameterDict()
        self.zp = nn.ParameterDict()
        for i, w in enumerate(self.widths):
            c = active_channels(w, channels)
            for b in self.bits:
                self.scale[f"{i}_{b}"] = nn.Parameter(torch.ones(c))
                self.zp[f"{i}_{b}"] = nn.Parameter(torch.zeros(c))
        self.register_buffer("initialized", torch.zeros(len(self.widths), len(self.bits)))

    @torch.no_grad()
    def init_from(self, x: torch.Tensor, i: int, b: int) -> None:
        c = x.shape[1]
        v = x.transpose(0, 1).reshape(c, -1)
        lo = torch.quantile(v[:, :: max(1, v.shape[1] // 20000)], 0.001, dim=1).clamp(max=0)
        hi = torch.quantile(v[:, :: max(1, v.shape[1] // 20000)], 0.999, dim=1).clamp(min=0)
        qmax = 2 ** b - 1
        s = ((hi - lo) / qmax).clamp(min=1e-4)
        self.scale[f"{i}_{b}"].copy_(s)
        self.zp[f"{i}_{b}"].copy_(torch.round(-lo / s).clamp(0, qmax))
        self.initialized[i, self.bits.index(b)] = 1

    def params(self, i: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        qmax = 2 ** b - 1
        s = self.scale[f"{i}_{b}"].abs().clamp(min=1e-5)
        zp = torch.round(self.zp[f"{i}_{b}"]).clamp(0, qmax)
        return s, zp

    def forward(self, x: torch.Tensor, i: int, b: int | None) -> torch.Tensor:
        if b is None:
            return x
        if self.training and not bool(self.initialized[i, self.bits.index(b)]):
            self.init_from(x.detach(), i, b)
        qmax = 2 ** b - 1
        g = 1.0 / math.sqrt(x[0, 0].numel() * qmax)
        s = grad_scale(self.scale[f"{i}_{b}"], g).abs().clamp(min=1e-5).view(1, -1, 1, 1)
        zp = round_ste(grad_scale(self.zp[f"{i}_{b}"], g)).clamp(0, qmax).view(1, -1, 1, 1)
        q = torch.clamp(round_ste(x / s + zp), 0, qmax)
        return (q - zp) * s

    @torch.no_grad()
    def codes(self, x: torch.Tensor, i: int, b: int) -> torch.Tensor:
        """Integer codes (what is transmitted) [N, C, H, W] uint8."""
        s, zp = self.params(i, b)
        q = torch.clamp(torch.round(x / s.view(1, -1, 1, 1) + zp.view(1, -1, 1, 1)), 0, 2 ** b - 1)
        return q.to(torch.uint8)


# ---------------------------------------------------------------------------------------------
# server


def frame_slots(owner: torch.Tensor, n_frames: int) -> tuple[torch.Tensor, int]:
    """owner [A] frame index of each agent -> (slot [A]: the agent's place among its frame's agents,
    the largest agent count of a frame)."""
    nmax = int(torch.bincount(owner, minlength=n_frames).max())
    slot = torch.zeros(len(owner), dtype=torch.long)
    seen: dict[int, int] = {}
    for a in range(len(owner)):
        o = int(owner[a])
        slot[a] = seen.get(o, 0)
        seen[o] = int(slot[a]) + 1
    return slot, nmax


def choose_agents(na: int, rng: random.Random, keep_all) -> list[int]:
    """A random ego first, then all the other agents (when ``keep_all()``, asked after the shuffle) or
    a random subset of them."""
    ego = rng.randrange(na)
    others = [a for a in range(na) if a != ego]
    rng.shuffle(others)
    k = na - 1 if keep_all() else rng.randrange(na)   # 0 .. na-1 others
    return [ego] + others[:k]


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin, cout, k=3, dilation=1):
        super().__init__(nn.Conv2d(cin, cout, k, padding=dilation * (k // 2), dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Server(nn.Module):
    """Zero fill -> rotate features by the agent's relative yaw -> warp into the ego grid ->
    fuse (max | attention) -> backbone -> head."""

    def __init__(self, channels=64, backbone=64, head=64, classes=1):
        super().__init__()
        self.channels = channels
        # pose-conditioned channel mixing (see ``rotate``): W0 starts as the identity
        self.rotate_conv = nn.Conv2d(len(ROT_TERMS) * channels, channels, 1)
        with torch.no_grad():
            self.rotate_conv.weight.zero_()
            self.rotate_conv.weight[:, :channels, 0, 0] = torch.eye(channels)
            self.rotate_conv.bias.zero_()
        self.score = nn.Conv2d(channels, 1, 1)                      # attention score per agent and cell
        self.backbone = nn.Sequential(ConvBNReLU(channels, backbone), ConvBNReLU(backbone, backbone),
                                      ConvBNReLU(backbone, backbone, dilation=2), ConvBNReLU(backbone, backbone))
        self.shared = nn.Sequential(nn.Conv2d(backbone, head, 3, padding=1), nn.ReLU(inplace=True))
        self.heatmap = nn.Conv2d(head, classes, 1)
        self.offset = nn.Conv2d(head, 2, 1)
        self.size = nn.Conv2d(head, 2, 1)
        self.yaw = nn.Conv2d(head, 2, 1)
        nn.init.constant_(self.heatmap.bias, -2.19)

    def zero_fill(self, f: torch.Tensor) -> torch.Tensor:
        return F.pad(f, (0, 0, 0, 0, 0, self.channels - f.shape[1])) if f.shape[1] < self.channels else f

    def rotate(self, f: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """Pose-conditioned 1x1 channel mixing in the agent's own grid, before the warp.

        A feature map describes orientations (of vehicles, walls, lanes) in the sending agent's
        frame, and at 2 m cells a vehicle spans one or two cells, so warping the map moves where
        things are but cannot turn what the channels say about their heading. With
        a = yaw_ego - yaw_agent (cos a = theta[0, 0], sin a = theta[1, 0]) this layer computes
        y = W0 x + cos(a) W1 x + sin(a) W2 x + cos(2a) W3 x + sin(2a) W4 x + b,
        i.e. one 1x1 convolution whose weight W(a) = sum_k t_k(a) W_k depends on the agent's pose:
        enough to rotate channel pairs that encode angles at frequency 1 and 2."""
        c, s = theta[:, 0, 0], theta[:, 1, 0]
        terms = rot_terms(c, s).to(f.dtype)                          # [A, 5]
        C = f.shape[1]
        w = self.rotate_conv.weight[:, :, 0, 0].view(C, len(ROT_TERMS), C)   # [out, k, in]
        wa = torch.einsum("okc,ak->aoc", w, terms)                   # per-agent weight [A, out, in]
        return torch.einsum("aoc,achw->aohw", wa, f) + self.rotate_conv.bias.view(1, -1, 1, 1)

    def align(self, f: torch.Tensor, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero fill, rotate and warp agents' maps into the ego grid: (warped [A, C, H, W], valid)."""
        return self.warp(self.rotate(self.zero_fill(f), theta), theta)

    @staticmethod
    def warp(f: torch.Tensor, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """f [A, C, H, W], theta [A, 2, 3] -> warped features and validity [A, 1, H, W]."""
        grid = F.affine_grid(theta.to(f.dtype), list(f.shape), align_corners=False)
        wf = F.grid_sample(f, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        ones = torch.ones(f.shape[0], 1, f.shape[2], f.shape[3], dtype=f.dtype)
        valid = F.grid_sample(ones, grid, mode="bilinear", padding_mode="zeros", align_corners=False) > 0.5
        return wf, valid

    def fuse(self, wf: torch.Tensor, valid: torch.Tensor, owner: torch.Tensor, n_frames: int,
             mode: str) -> torch.Tensor:
        """wf [A, C, H, W] warped features, owner [A] frame index -> fused [n_frames, C, H, W].
        Agents of a frame are padded to the largest count; an absent agent or a cell outside an
        agent's view never wins (the ego covers its whole grid)."""
        A, C, H, W = wf.shape
        slot, nmax = frame_slots(owner, n_frames)
        feats = wf.new_zeros(n_frames, nmax, C, H, W)
        mask = torch.zeros(n_frames, nmax, 1, H, W, dtype=torch.bool)
        feats[owner, slot] = wf
        mask[owner, slot] = valid
        if mode == "max":
            fused = feats.masked_fill(~mask, float("-inf")).amax(1)
            return torch.where(torch.isfinite(fused), fused, torch.zeros_like(fused))
        if mode == "att":
            sc = self.score(wf)                                      # [A, 1, H, W]
            scores = wf.new_full((n_frames, nmax, 1, H, W), float("-inf"))
            scores[owner, slot] = sc.masked_fill(~valid, float("-inf"))
            wts = torch.softmax(scores, dim=1)
            wts = torch.nan_to_num(wts, nan=0.0)
            return (wts * feats).sum(1)
        raise ValueError(mode)

    def head(self, fused: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.shared(self.backbone(fused))
        return {"heatmap": self.heatmap(y), "offset": self.offset(y), "size": self.size(y), "yaw": self.yaw(y)}

    def forward(self, feats: torch.Tensor, theta: torch.Tensor, owner: torch.Tensor, n_frames: int,
                mode: str = "att") -> dict[str, torch.Tensor]:
        wf, valid = self.align(feats, theta)
        return self.head(self.fuse(wf, valid, owner, n_frames, mode))


class CoopModel(nn.Module):
    def __init__(self, arch: dict[str, Any]):
        super().__init__()
        self.arch = arch
        self.encoder = SlimNet(arch)
        s = arch.get("server", {})
        self.quant = FeatureQuant(arch["widths"], s.get("feature_channels", 64))
        self.server = Server(s.get("feature_channels", 64), s.get("backbone_channels", 64),
                             s.get("head_channels", 64), len(s.get("classes", ["vehicle"])))

    def encode(self, bev: torch.Tensor, wi: int, bits: int | None) -> torch.Tensor:
        f = encoder_forward(self.encoder, bev, wi, self.training)
        return self.quant(f, wi, bits)


# ---------------------------------------------------------------------------------------------
# targets, loss, decoding


def make_targets(boxes_ego: np.ndarray, ignore_boxes: np.ndarray) -> dict[str, np.ndarray]:
    """boxes_ego [B, >=7] (x, y, z, l, w, h, yaw) in the ego frame -> CenterPoint targets on the
    32 x 32 grid. ``ignore_boxes`` (the ego's own vehicle): heatmap loss weight 0 under it."""
    H = FEAT_HW
    hm = np.zeros((1, H, H), np.float32)
    ind = np.zeros((H, H), bool)
    reg = np.zeros((6, H, H), np.float32)    # off x, off y, log l, log w, sin 2yaw, cos 2yaw
    weight = np.ones((1, H, H), np.float32)
    ii, jj = np.mgrid[0:H, 0:H]
    for b in boxes_ego:
        u = (b[0] + GRID) / FEAT_CELL
        v = (b[1] + GRID) / FEAT_CELL
        j, i = int(math.floor(u)), int(math.floor(v))
        if not (0 <= i < H and 0 <= j < H):
            continue
        sigma = max(0.6, 0.25 * math.hypot(b[3], b[4]) / FEAT_CELL)
        g = np.exp(-((ii - i) ** 2 + (jj - j) ** 2) / (2 * sigma * sigma))
        hm[0] = np.maximum(hm[0], g)
        ind[i, j] = True
        reg[:, i, j] = [u - j, v - i, math.log(b[3]), math.log(b[4]), math.sin(2 * b[6]),
                        math.cos(2 * b[6])]
    for b in ignore_boxes:
        c = box_corners(np.array([[b[0], b[1], b[3] + 1.0, b[4] + 1.0, b[6]]]))[0]
        lo = np.floor((c.min(0) + GRID) / FEAT_CELL).astype(int)
        hi = np.floor((c.max(0) + GRID) / FEAT_CELL).astype(int)
        weight[0, max(lo[1], 0):hi[1] + 1, max(lo[0], 0):hi[0] + 1] = 0
    return {"hm": hm, "ind": ind, "reg": reg, "weight": weight}


def focal_loss(logit, gt, weight):
    p = torch.sigmoid(logit).clamp(1e-4, 1 - 1e-4)
    pos = gt.eq(1).float() * weight
    neg = (1 - gt.eq(1).float()) * weight
    pos_l = torch.log(p) * (1 - p) ** 2 * pos
    neg_l = torch.log(1 - p) * p ** 2 * (1 - gt) ** 4 * neg
    npos = pos.sum().clamp(min=1)
    return -(pos_l.sum() + neg_l.sum()) / npos


def reg_pred(out: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([out["offset"], out["size"], out["yaw"]], 1)


def det_loss(out, tg):
    hm = focal_loss(out["heatmap"], tg["hm"], tg["weight"])
    ind = tg["ind"]
    n = ind.sum().clamp(min=1)
    pr = reg_pred(out).permute(0, 2, 3, 1)[ind]
    gt = tg["reg"].permute(0, 2, 3, 1)[ind]
    reg = (pr - gt).abs().sum() / n
    return hm, reg


def kd_loss(out, teacher, tg):
    ps = torch.sigmoid(out["heatmap"])
    pt = torch.sigmoid(teacher["heatmap"])
    n = tg["ind"].sum().clamp(min=1)
    hm = ((ps - pt) ** 2 * tg["weight"]).sum() / n
    ind = tg["ind"]
    reg = (reg_pred(out).permute(0, 2, 3, 1)[ind] - reg_pred(teacher).permute(0, 2, 3, 1)[ind]).abs().sum() / n
    return hm + 0.5 * reg


PEAK_RULES = ("local_max_3x3", "above_threshold")


@torch.no_grad()
def decode(out: dict[str, torch.Tensor], k: int = 60, thresh: float = 0.05, nms_iou: float = 0.1,
           peaks: str = "local_max_3x3"):
    """Per frame: boxes [N, 5] (x, y, l, w, yaw) in metres in the ego frame and scores [N].
    Candidates: cells whose sigmoid exceeds ``thresh`` and, with "local_max_3x3", that are the
    maximum of their 3 x 3 neighbourhood (CenterPoint: of two centres in neighbouring 2 m cells,
    one box survives); with "above_threshold", every such cell, so that NMS, not the grid,
    separates neighbours (a cell beside a centre regresses a box near that centre's, which NMS
    removes): the top ``k``, then rotated NMS."""
    if peaks not in PEAK_RULES:
        raise ValueError(f"peaks {peaks!r}: one of {PEAK_RULES}")
    hm = torch.sigmoid(out["heatmap"])[:, 0]
    if peaks == "above_threshold":
        peaks = hm > thresh
    else:
        peaks = (hm == F.max_pool2d(hm[:, None], 3, 1, 1)[:, 0]) & (hm > thresh)
    res = []
    for n in range(hm.shape[0]):
        sc = torch.where(peaks[n], hm[n], torch.zeros_like(hm[n])).flatten()
        top = torch.topk(sc, k)
        keep = top.values > thresh
        idx = top.indices[keep]
        s = top.values[keep].numpy()
        i, j = (idx // FEAT_HW).numpy(), (idx % FEAT_HW).numpy()
        off = out["offset"][n, :, i, j].numpy()
        size = np.exp(out["size"][n, :, i, j].numpy().clip(-3, 4))
        yaw = 0.5 * np.arctan2(out["yaw"][n, 0, i, j].numpy(), out["yaw"][n, 1, i, j].numpy())
        x = (j + off[0]) * FEAT_CELL - GRID
        y = (i + off[1]) * FEAT_CELL - GRID
        b = np.stack([x, y, size[0], size[1], yaw], 1) if len(s) else np.zeros((0, 5))
        kept = rotated_nms(b, s, nms_iou)
        res.append((b[kept], s[kept]))
    return res


# ---------------------------------------------------------------------------------------------
# augmentation (exact on the BEV grid)


def augment(bevs: torch.Tensor, poses: np.ndarray, boxes: np.ndarray, rng: random.Random):
    """Random y-mirror of the world (BEV rows flipped, poses and boxes mirrored) and per-agent
    rotations of the sensor frame by k * 90 deg (BEV rot90, yaw + k * 90 deg). Returns new copies."""
    poses = poses.copy()
    boxes = boxes.copy()
    if rng.random() < 0.5:
        bevs = torch.flip(bevs, dims=[-2])
        poses[:, 1] *= -1
        poses[:, 2] *= -1
        boxes[:, 1] *= -1
        boxes[:, 6] *= -1
    ks = [rng.randrange(4) for _ in range(len(poses))]
    bevs = torch.stack([torch.rot90(b, k, dims=(-2, -1)) for b, k in zip(bevs, ks)])
    poses[:, 2] = wrap(poses[:, 2] + np.array(ks) * (np.pi / 2))
    return bevs, poses, boxes


# ---------------------------------------------------------------------------------------------
# server architecture (the JSON stored under "server" in the model file)


def server_arch(model: CoopModel) -> dict[str, Any]:
    s = model.server
    C = s.channels
    Cb = s.backbone[0][0].out_channels
    Ch = s.shared[0].out_channels

    def conv(name, inp, cin, cout, k, dil=1, act="relu"):
        return {"name": name, "type": "conv2d", "input": inp, "in_channels": cin, "out_channels": cout,
                "kernel": [k, k], "stride": [1, 1], "padding": [dil * (k // 2)] * 2, "dilation": [dil, dil],
                "groups": 1, "bias": True, "batch_norm": None, "activation": act}

    layers = [
        {"name": "zero_fill", "type": "zero_fill", "input": "features", "out_channels": C,
         "doc": "an agent at width i sends the first ceil(w_i*64) channels; the rest are 0"},
        {"name": "dequantize", "type": "dequantize_per_channel", "input": "zero_fill",
         "doc": "x = (q - features.{i}.{bits}.zero_point[c]) * features.{i}.{bits}.scale[c] (before zero fill)"},
        {"name": "rotate", "type": "pose_conditioned_conv1x1", "input": "dequantize", "out_channels": C,
         "weight": "server.fusion.rotate.weight", "bias": "server.fusion.rotate.bias", "terms": list(ROT_TERMS),
         "doc": "per agent, in its own grid: a = yaw_ego - yaw_agent (cos a = theta[0][0], sin a = theta[1][0]); "
                "weight [C, 5*C, 1, 1] = [W_0 | ... | W_4] (input channel k*C + c is term k of channel c); "
                "y = (sum_k t_k(a) W_k) x + bias with t = (1, cos a, sin a, cos 2a, sin 2a)"},
        {"name": "warp", "type": "affine_warp", "input": "rotate",
         "mode": "bilinear", "padding_mode": "zeros", "align_corners": False,
         "doc": "torch affine_grid+grid_sample; theta = [R(yaw_e-yaw_j) | R(-yaw_j)(t_e-t_j)/32] maps ego-grid "
                "normalized (x=column, y=row) to agent j's; also warps a ones map, valid = value > 0.5"},
        {"name": "fusion", "type": "attention_fusion", "input": "warp", "score": "server.fusion.score",
         "doc": "per cell: s_j = conv1x1(score)(warped_j), -inf where invalid; w = softmax_j(s); fused = sum_j w_j x_j"},
        {"name": "fusion_max", "type": "max_fusion", "input": "warp", "alternative_to": "fusion",
         "doc": "per cell and channel: max over valid agents (the ego is valid everywhere)"},
        conv("backbone.0", "fusion", C, Cb, 3), conv("backbone.1", "backbone.0", Cb, Cb, 3),
        conv("backbone.2", "backbone.1", Cb, Cb, 3, dil=2), conv("backbone.3", "backbone.2", Cb, Cb, 3),
        conv("head.shared", "backbone.3", Cb, Ch, 3),
        conv("head.heatmap", "head.shared", Ch, 1, 1, act=None),
        conv("head.offset", "head.shared", Ch, 2, 1, act=None),
        conv("head.size", "head.shared", Ch, 2, 1, act=None),
        conv("head.yaw", "head.shared", Ch, 2, 1, act=None),
    ]
    return {
        "input": {"name": "features", "channels": C, "height": FEAT_HW, "width": FEAT_HW,
                  "grid": {"x_min": -GRID, "x_max": GRID, "y_min": -GRID, "y_max": GRID, "cell": FEAT_CELL}},
        "tensor_prefix": "server.",
        "batch_norm": "folded into the convolutions (weights and biases are BN-folded float32)",
        "layers": layers,
        "outputs": ["head.heatmap", "head.offset", "head.size", "head.yaw"],
        "decode": {"heatmap": "sigmoid; peaks = 3x3 max-pool local maxima with score > 0.05, top 60",
                   "center": "x = (col + offset[0]) * 2 - 32, y = (row + offset[1]) * 2 - 32 (metres, ego frame)",
                   "size": "length = exp(size[0]), width = exp(size[1])",
                   "yaw": "0.5 * atan2(yaw[0], yaw[1]) (the head predicts sin 2yaw, cos 2yaw: a box's axis, "
                          "not its direction)",
                   "yaw_encoding": "double_angle",
                   "nms": "greedy rotated-box NMS, BEV IoU > 0.1 suppressed"},
        "classes": ["vehicle"],
        "features": {"bits": list(BITS),
                     "tensors": "features.{width_index}.{bits}.scale / .zero_point, F32 [active channels]",
                     "quantizer": "q = clamp(round_half_even(x / scale + zero_point), 0, 2^bits - 1)"},
    }
