"""Transformer blocks of the tracker: the CoTracker-style `EfficientUpdateFormer` (official VGGT).

Attribute names (including the official spelling `virual_tracks`) follow the official modules so
that state dicts load strictly.
"""

from __future__ import annotations

import torch
from torch import nn


class Mlp(nn.Module):
    """(..., in_features) -> (..., out_features): fc1, exact GELU, fc2."""

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class AttnBlock(nn.Module):
    """Self-attention block, (B, T, C) -> (B, T, C).

    Official (non-standard) residual: x = norm1(x); x = x + attn(x); x = x + mlp(norm2(x)), i.e. the
    first skip carries the normalised input.
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size)
        self.norm2 = nn.LayerNorm(hidden_size)
        self.attn = nn.MultiheadAttention(embed_dim=hidden_size, num_heads=num_heads, batch_first=True)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x)
        x = x + self.attn(x, x, x, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class CrossAttnBlock(nn.Module):
    """Cross-attention block, x (B, T, C) attends to context (B, T', C) -> (B, T, C).

    Official residual: x = norm1(x); x = x + attn(x, norm_context(ctx)); x = x + mlp(norm2(x)).
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size)
        self.norm_context = nn.LayerNorm(hidden_size)
        self.norm2 = nn.LayerNorm(hidden_size)
        self.cross_attn = nn.MultiheadAttention(embed_dim=hidden_size, num_heads=num_heads, batch_first=True)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x)
        context = self.norm_context(context)
        x = x + self.cross_attn(x, context, context, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class EfficientUpdateFormer(nn.Module):
    """Track-update transformer: (B, N, T, input_dim) -> (B, N, T, output_dim).

    Alternates attention over time (per track) with attention across tracks routed through
    `num_virtual_tracks` learned virtual tracks (points -> virtual, virtual self-attention,
    virtual -> points), then adds the input projection back and projects with `flow_head`.
    """

    def __init__(
        self,
        space_depth: int = 6,
        time_depth: int = 6,
        input_dim: int = 320,
        hidden_size: int = 384,
        num_heads: int = 8,
        output_dim: int = 130,
        mlp_ratio: float = 4.0,
        add_space_attn: bool = True,
        num_virtual_tracks: int = 64,
    ) -> None:
        super().__init__()
        if hidden_size % num_heads != 0:
            raise ValueError(f"hidden_size: expected a multiple of num_heads={num_heads}, got {hidden_size}")
        if add_space_attn and (space_depth <= 0 or time_depth % space_depth != 0):
            raise ValueError(f"space_depth: expected a positive divisor of time_depth={time_depth}, got {space_depth}")
        self.num_heads = num_heads
        self.hidden_size = hidden_size
        self.add_space_attn = add_space_attn
        self.num_virtual_tracks = num_virtual_tracks

        self.input_norm = nn.LayerNorm(input_dim)
        self.input_transform = nn.Linear(input_dim, hidden_size, bias=True)
        self.output_norm = nn.LayerNorm(hidden_size)
        self.flow_head = nn.Linear(hidden_size, output_dim, bias=True)
        self.virual_tracks = (
            nn.Parameter(torch.randn(1, num_virtual_tracks, 1, hidden_size)) if add_space_attn else None
        )

        self.time_blocks = nn.ModuleList([AttnBlock(hidden_size, num_heads, mlp_ratio) for _ in range(time_depth)])
        if add_space_attn:
            self.space_virtual_blocks = nn.ModuleList(
                [AttnBlock(hidden_size, num_heads, mlp_ratio) for _ in range(space_depth)]
            )
            self.space_point2virtual_blocks = nn.ModuleList(
                [CrossAttnBlock(hidden_size, num_heads, mlp_ratio) for _ in range(space_depth)]
            )
            self.space_virtual2point_blocks = nn.ModuleList(
                [CrossAttnBlock(hidden_size, num_heads, mlp_ratio) for _ in range(space_depth)]
            )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official init: Xavier-uniform Linear weights, zero biases, flow_head ~ trunc N(0, 0.001)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.flow_head.weight, std=0.001)

    def forward(self, input_tensor: torch.Tensor) -> torch.Tensor:
        """(B, N, T, input_dim) per track and frame -> (B, N, T, output_dim)."""
        tokens = self.input_transform(self.input_norm(input_tensor))
        init_tokens = tokens
        B, _, T, _ = tokens.shape
        if self.add_space_attn:
            virtual = self.virual_tracks.repeat(B, 1, T, 1)  # (1, V, 1, C) -> (B, V, T, C)
            tokens = torch.cat([tokens, virtual], dim=1)
        N = tokens.shape[1]
        n_points = N - self.num_virtual_tracks if self.add_space_attn else N
        space_every = len(self.time_blocks) // len(self.space_virtual_blocks) if self.add_space_attn else 0

        j = 0
        for i, time_block in enumerate(self.time_blocks):
            time_tokens = time_block(tokens.reshape(B * N, T, -1))  # (B, N, T, C) -> (B*N, T, C)
            tokens = time_tokens.reshape(B, N, T, -1)  # (B*N, T, C) -> (B, N, T, C)
            if self.add_space_attn and i % space_every == 0:
                space_tokens = tokens.permute(0, 2, 1, 3).reshape(B * T, N, -1)  # (B, N, T, C) -> (B*T, N, C)
                points, virtual = space_tokens[:, :n_points], space_tokens[:, n_points:]
                virtual = self.space_virtual2point_blocks[j](virtual, points)
                virtual = self.space_virtual_blocks[j](virtual)
                points = self.space_point2virtual_blocks[j](points, virtual)
                space_tokens = torch.cat([points, virtual], dim=1)
                tokens = space_tokens.reshape(B, T, N, -1).permute(0, 2, 1, 3)  # (B*T, N, C) -> (B, N, T, C)
                j += 1

        tokens = tokens[:, :n_points] + init_tokens
        return self.flow_head(self.output_norm(tokens))
