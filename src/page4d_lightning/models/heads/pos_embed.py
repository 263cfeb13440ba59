"""Sinusoidal position embeddings used by the dense (DPT) and tracking heads (official VGGT semantics).

Two families, kept apart because the official heads use different frequencies and layouts:

- DPT: a normalised UV grid (`create_uv_grid`) turned into sin/cos features with base
  `omega_0 = 100` (`position_grid_to_embed`), added to feature maps with a 0.1 weight.
- Tracker: an integer pixel grid embedded with base 10000 (`get_2d_sincos_pos_embed`) and the
  frequency-interleaved flow embedding `get_2d_embedding`.
"""

from __future__ import annotations

import torch


def make_sincos_pos_embed(embed_dim: int, pos: torch.Tensor, omega_0: float = 100.0) -> torch.Tensor:
    """Positions (any shape, M values) -> (M, embed_dim) float32 = [sin(p w_k) | cos(p w_k)].

    Frequencies w_k = omega_0 ** (-k / (embed_dim / 2)), k = 0 .. embed_dim/2 - 1.
    """
    if embed_dim % 2 != 0:
        raise ValueError(f"embed_dim: expected an even number, got {embed_dim}")
    omega = torch.arange(embed_dim // 2, dtype=torch.float32, device=pos.device) / (embed_dim / 2.0)
    omega = 1.0 / omega_0**omega  # (D/2,)
    out = pos.reshape(-1).to(torch.float32)[:, None] * omega[None, :]  # (M, D/2) outer product
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def position_grid_to_embed(pos_grid: torch.Tensor, embed_dim: int, omega_0: float = 100.0) -> torch.Tensor:
    """(H, W, 2) xy grid -> (H, W, embed_dim) float32: first half embeds x, second half y.

    `embed_dim` must be a multiple of 4 (each coordinate gets an even number of channels).
    """
    if pos_grid.dim() != 3 or pos_grid.shape[-1] != 2:
        raise ValueError(f"pos_grid: expected (H, W, 2), got {tuple(pos_grid.shape)}")
    if embed_dim % 4 != 0:
        raise ValueError(f"embed_dim: expected a multiple of 4, got {embed_dim}")
    H, W, _ = pos_grid.shape
    flat = pos_grid.reshape(-1, 2)  # (H, W, 2) -> (H*W, 2)
    emb_x = make_sincos_pos_embed(embed_dim // 2, flat[:, 0], omega_0=omega_0)  # (H*W, D/2)
    emb_y = make_sincos_pos_embed(embed_dim // 2, flat[:, 1], omega_0=omega_0)  # (H*W, D/2)
    return torch.cat([emb_x, emb_y], dim=-1).view(H, W, embed_dim)  # (H*W, D) -> (H, W, D)


def create_uv_grid(
    width: int,
    height: int,
    aspect_ratio: float | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Normalised UV grid (height, width, 2), [..., 0] = u (x, rightwards), [..., 1] = v (y, downwards).

    The plane spans [-a/d, a/d] x [-1/d, 1/d] with a = `aspect_ratio` (width / height; default
    width / height) and d = sqrt(a^2 + 1), so its diagonal has length 2; samples sit at the centres
    of `width` x `height` equal cells (MoGe's convention, as the official VGGT heads use it).
    """
    if aspect_ratio is None:
        aspect_ratio = float(width) / float(height)
    diag = (aspect_ratio**2 + 1.0) ** 0.5
    span_x, span_y = aspect_ratio / diag, 1.0 / diag
    half_x = span_x * (width - 1) / width
    half_y = span_y * (height - 1) / height
    xs = torch.linspace(-half_x, half_x, steps=width, dtype=dtype, device=device)
    ys = torch.linspace(-half_y, half_y, steps=height, dtype=dtype, device=device)
    uu, vv = torch.meshgrid(xs, ys, indexing="xy")  # each (height, width)
    return torch.stack((uu, vv), dim=-1)


def get_2d_sincos_pos_embed(
    embed_dim: int,
    grid_size: tuple[int, int],
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Pixel-index embedding of an (H, W) grid -> (1, embed_dim, H, W), base 10000.

    Channels [0, D/2) embed the column index x, channels [D/2, D) the row index y, each as
    [sin(p w_k) | cos(p w_k)] with w_k = 10000 ** (-k / (D/4)). `embed_dim` must be a multiple of 4.
    """
    if embed_dim % 4 != 0:
        raise ValueError(f"embed_dim: expected a multiple of 4, got {embed_dim}")
    grid_h, grid_w = grid_size
    ys = torch.arange(grid_h, dtype=torch.float32, device=device)
    xs = torch.arange(grid_w, dtype=torch.float32, device=device)
    gx, gy = torch.meshgrid(xs, ys, indexing="xy")  # each (H, W)
    emb_x = make_sincos_pos_embed(embed_dim // 2, gx, omega_0=10000.0)  # (H*W, D/2)
    emb_y = make_sincos_pos_embed(embed_dim // 2, gy, omega_0=10000.0)  # (H*W, D/2)
    emb = torch.cat([emb_x, emb_y], dim=1).reshape(1, grid_h, grid_w, embed_dim)  # (H*W, D) -> (1, H, W, D)
    return emb.permute(0, 3, 1, 2).to(dtype)  # (1, H, W, D) -> (1, D, H, W)


def get_2d_embedding(xy: torch.Tensor, C: int, cat_coords: bool = True) -> torch.Tensor:
    """(B, N, 2) xy offsets -> (B, N, 2C) float32 (or (B, N, 2C + 2) with `cat_coords`).

    Per coordinate p, channel 2k is sin(p f_k) and 2k+1 is cos(p f_k) with f_k = 2k * 1000 / C
    (interleaved, and f_0 = 0); the x block comes before the y block; `cat_coords` prepends xy.
    `C` must be even.
    """
    if xy.dim() != 3 or xy.shape[-1] != 2:
        raise ValueError(f"xy: expected (B, N, 2), got {tuple(xy.shape)}")
    if C % 2 != 0:
        raise ValueError(f"C: expected an even number, got {C}")
    freqs = torch.arange(0, C, 2, device=xy.device, dtype=torch.float32) * (1000.0 / C)  # (C/2,)
    angles = xy.to(torch.float32)[..., None] * freqs  # (B, N, 2, C/2)
    # interleave: (B, N, 2, C/2, [sin, cos]) -> (B, N, 2C) with x block then y block
    pe = torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1).flatten(2)
    if cat_coords:
        pe = torch.cat([xy.to(pe.dtype), pe], dim=2)
    return pe
