"""Residual vector quantization of the deep-fusion message (issue 12's codebook payload).

A sent cell's message is a K-vector (the agent's 1x1 compression of its backbone). Level l of an
L-level residual codebook holds S codewords of K floats; a cell is sent as L indices, each the
nearest codeword to what the levels before it left:
    r_0 = x;  q_l = argmin_i |r_l - C_l[i]|^2;  r_{l+1} = r_l - C_l[q_l];  x^ = sum_l C_l[q_l]
(ties: the lowest index). log2(S) bits per index, L * log2(S) bits per cell (3 x 7 = 21 for
QuantV2X's 3 x 128). Codebooks are fit by k-means (k-means++ seeds, Lloyd) level by level on the
residuals of sent cells of training frames.
"""

from __future__ import annotations

import numpy as np
import torch


def kmeans(x: torch.Tensor, k: int, iters: int = 25, seed: int = 0) -> torch.Tensor:
    """[k, D] centroids of x [N, D] (k-means++ seeds, Lloyd iterations; empty clusters reseeded)."""
    g = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    c = x[torch.randint(n, (1,), generator=g)]
    d2 = ((x - c) ** 2).sum(1)
    for _ in range(1, k):
        p = d2 / d2.sum().clamp(min=1e-12)
        c = torch.cat([c, x[torch.multinomial(p, 1, generator=g)]])
        d2 = torch.minimum(d2, ((x - c[-1]) ** 2).sum(1))
    for _ in range(iters):
        a = torch.cdist(x, c).argmin(1)
        for j in range(k):
            m = a == j
            if m.any():
                c[j] = x[m].mean(0)
            else:
                c[j] = x[torch.randint(n, (1,), generator=g)][0]
    return c


def fit(x: torch.Tensor, levels: int, size: int, iters: int = 25) -> torch.Tensor:
    """[levels, size, D] residual codebooks for the vectors x [N, D]."""
    books = []
    r = x.clone()
    for level in range(levels):
        c = kmeans(r, size, iters, seed=level)
        r = r - c[nearest(r, c)]
        books.append(c)
    return torch.stack(books)


def nearest(r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codeword (squared L2, ties to the lowest index) for each row of r."""
    d = ((r[:, None, :] - c[None]) ** 2).sum(-1)
    return d.argmin(1)


def encode(x: torch.Tensor, books: torch.Tensor) -> torch.Tensor:
    """[N, L] indices of x [N, D]."""
    r = x.clone()
    out = []
    for c in books:
        q = nearest(r, c)
        r = r - c[q]
        out.append(q)
    return torch.stack(out, 1)


def decode(q: torch.Tensor, books: torch.Tensor) -> torch.Tensor:
    """[N, D] reconstruction of indices q [N, L]."""
    return sum(books[level][q[:, level]] for level in range(books.shape[0]))


def quantize_map(m: torch.Tensor, books: torch.Tensor) -> torch.Tensor:
    """A message map [K, H, W] with every cell replaced by its reconstruction."""
    k, h, w = m.shape
    x = m.permute(1, 2, 0).reshape(-1, k)
    return decode(encode(x, books), books).reshape(h, w, k).permute(2, 0, 1).contiguous()


def index_bits(size: int) -> int:
    b = int(np.ceil(np.log2(size)))
    if not 1 <= b <= 8 or 2 ** b != size:
        raise ValueError(f"codebook size {size}: a power of two from 2 to 256")
    return b
