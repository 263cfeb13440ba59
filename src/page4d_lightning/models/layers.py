"""Transformer building blocks of VGGT / PAGE-4D: Mlp, LayerScale, Attention, Block.

`Attention` optionally adds PAGE-4D's rank-1 logit bias `query_weight[i] * key_value[j]` without
building any N x N tensor: the bias folds into q.k through one extra channel (see `biased_sdpa`),
so `F.scaled_dot_product_attention` (flash / memory-efficient kernels) still runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .rope import RopeTable, RotaryPositionEmbedding2D


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2 over the last dim: (..., in_features) -> (..., out_features)."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: Callable[..., nn.Module] = nn.GELU,
        drop: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class LayerScale(nn.Module):
    """Per-channel residual scale `x * gamma`, gamma (dim,) initialised to `init_values`."""

    def __init__(self, dim: int, init_values: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


def biased_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    query_weight: torch.Tensor,
    key_value: torch.Tensor,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """softmax(q k^T / sqrt(D) + w_i c_j) v with a rank-1 bias, through the fused SDPA kernels.

    q, k, v: (B, heads, N, D); query_weight w: (B, N); key_value c: (B, N) -> (B, heads, N, D).
    One channel sqrt(D) * w_i is appended to q and c_j to k, then q, k, v are zero-padded to a
    multiple of 8 channels (what the fused kernels accept); the softmax scale stays 1/sqrt(D).
    Memory is O(N * D): no N x N bias or attention matrix exists.
    """
    batch, heads, _, dim = q.shape
    dim_aug = ((dim + 1 + 7) // 8) * 8
    tail = dim_aug - dim - 1
    w = (query_weight.to(q.dtype) * math.sqrt(dim))[:, None, :, None].expand(batch, heads, -1, 1)  # (B,N)->(B,h,N,1)
    c = key_value.to(k.dtype)[:, None, :, None].expand(batch, heads, -1, 1)  # (B, N) -> (B, heads, N, 1)
    q_aug = F.pad(torch.cat([q, w], dim=-1), (0, tail))  # (B, heads, N, dim_aug)
    k_aug = F.pad(torch.cat([k, c], dim=-1), (0, tail))
    v_aug = F.pad(v, (0, dim_aug - dim))
    out = F.scaled_dot_product_attention(q_aug, k_aug, v_aug, dropout_p=dropout_p, scale=dim**-0.5)
    return out[..., :dim]


class Attention(nn.Module):
    """Multi-head self-attention with optional qk-LayerNorm, 2D RoPE and rank-1 logit bias.

    forward(x (B, N, C), pos (B, N, 2) int64 / `RopeTable` / None, query_weight (B, N) or None,
    key_value (B, N) or None) -> (B, N, C). With both bias inputs, logit[i, j] += query_weight[i] * key_value[j].
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
        qk_norm: bool = False,
        rope: RotaryPositionEmbedding2D | None = None,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim: expected a multiple of num_heads={num_heads}, got {dim}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)
        self.rope = rope

    def forward(
        self,
        x: torch.Tensor,
        pos: torch.Tensor | RopeTable | None = None,
        query_weight: torch.Tensor | None = None,
        key_value: torch.Tensor | None = None,
    ) -> torch.Tensor:
        batch, n, channels = x.shape
        # (B, N, 3C) -> (3, B, heads, N, D)
        qkv = self.qkv(x).reshape(batch, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None:
            q, k = self.rope(q, pos), self.rope(k, pos)
        dropout_p = self.attn_drop.p if self.training else 0.0
        if query_weight is None or key_value is None:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        else:
            out = biased_sdpa(q, k, v, query_weight, key_value, dropout_p=dropout_p)
        out = out.transpose(1, 2).reshape(batch, n, channels)  # (B, heads, N, D) -> (B, N, C)
        return self.proj_drop(self.proj(out))


class Block(nn.Module):
    """Pre-norm transformer block: x + ls1(attn(norm1(x))), then x + ls2(mlp(norm2(x))).

    forward(x (B, N, C), pos (B, N, 2) / `RopeTable` / None, query_weight, key_value (B, N) or None) -> (B, N, C).
    `norm_eps` is 1e-5 in the aggregator and camera head, 1e-6 in the DINOv2 encoder.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        ffn_bias: bool = True,
        init_values: float | None = None,
        qk_norm: bool = False,
        rope: RotaryPositionEmbedding2D | None = None,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(
            dim, num_heads=num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias, qk_norm=qk_norm, rope=rope
        )
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), bias=ffn_bias)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        pos: torch.Tensor | RopeTable | None = None,
        query_weight: torch.Tensor | None = None,
        key_value: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), pos, query_weight, key_value))
        return x + self.ls2(self.mlp(self.norm2(x)))
