"""PAGE-4D aggregator: DINOv2 patch tokens + alternating frame / global attention with dynamics bias.

Per frame the token sequence is [camera (1), registers (R), patches (h*w)], P = 1 + R + h*w;
frame blocks attend within a frame (B*S, P, C), global blocks across all frames (B, S*P, C).
After frame block `mask_head_after_block` the spatial mask head reads the detached tokens; global
blocks in `bias_blocks` add the rank-1 bias `mask_scale * strength * m_j` (see `dynamics.py`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .dynamics import SpatialMaskHead, bias_inputs
from .layers import Block
from .rope import RopeTable, RotaryPositionEmbedding2D, patch_positions
from .vit import DinoVisionTransformer

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def slice_expand_and_flatten(token: torch.Tensor, batch: int, frames: int) -> torch.Tensor:
    """(1, 2, X, C) special tokens -> (B*S, X, C): slot 0 for the first frame, slot 1 for the others."""
    first = token[:, 0:1].expand(batch, 1, *token.shape[2:])
    others = token[:, 1:].expand(batch, frames - 1, *token.shape[2:])
    return torch.cat([first, others], dim=1).reshape(batch * frames, *token.shape[2:])  # (B, S, X, C) -> (B*S, X, C)


class Aggregator(nn.Module):
    """images (B, S, 3, H, W) in [0, 1] -> (list of `depth` entries (B, S, P, 2C), patch_start_idx, m).

    Each list entry concatenates the frame-block and global-block outputs of one depth index;
    m (B, S, H/p * W/p) is the mask value of `SpatialMaskHead`. `forward(images, keep_layers)` keeps only the
    entries whose index is in `keep_layers` (the others are None, so indices keep their meaning): the heads
    read 4 of the 24, and each entry of the full preset holds S x P x 2048 values.
    """

    def __init__(
        self,
        img_size: int = 518,
        patch_size: int = 14,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        num_register_tokens: int = 4,
        qk_norm: bool = True,
        rope_freq: float = 100.0,
        init_values: float = 0.01,
        patch_embed_depth: int = 24,
        patch_embed_num_heads: int = 16,
        mask_head_after_block: int = 9,
        bias_blocks: Sequence[int] = tuple(range(10, 20)),
        mask_head_hidden: int = 256,
        mask_scale: float = 64.0,
    ) -> None:
        super().__init__()
        if not 0 <= mask_head_after_block < depth:
            raise ValueError(f"mask_head_after_block: expected in [0, {depth}), got {mask_head_after_block}")
        if any(not mask_head_after_block <= i < depth for i in bias_blocks):
            raise ValueError(
                f"bias_blocks: expected indices in [{mask_head_after_block}, {depth}), got {tuple(bias_blocks)}"
            )
        self.patch_size = patch_size
        self.depth = depth
        self.mask_head_after_block = mask_head_after_block
        self.bias_blocks = frozenset(bias_blocks)
        self.mask_scale = float(mask_scale)
        self.mask_strength = 0.0
        self.gradient_checkpointing = False
        self.patch_start_idx = 1 + num_register_tokens
        self.head_dim = embed_dim // num_heads

        self.camera_token = nn.Parameter(torch.randn(1, 2, 1, embed_dim) * 1e-6)
        self.register_token = nn.Parameter(torch.randn(1, 2, num_register_tokens, embed_dim) * 1e-6)
        self.patch_embed = DinoVisionTransformer(
            img_size=img_size,
            patch_size=patch_size,
            embed_dim=embed_dim,
            depth=patch_embed_depth,
            num_heads=patch_embed_num_heads,
            mlp_ratio=mlp_ratio,
            num_register_tokens=num_register_tokens,
        )
        self.rope = RotaryPositionEmbedding2D(rope_freq) if rope_freq > 0 else None

        def make_block() -> Block:
            return Block(
                embed_dim, num_heads, mlp_ratio, init_values=init_values, qk_norm=qk_norm, rope=self.rope
            )

        self.frame_blocks = nn.ModuleList(make_block() for _ in range(depth))
        self.global_blocks = nn.ModuleList(make_block() for _ in range(depth))
        self.spatial_mask_head = SpatialMaskHead(embed_dim, mask_head_hidden)
        self.register_buffer("_resnet_mean", torch.tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1), persistent=False)
        self.register_buffer("_resnet_std", torch.tensor(IMAGENET_STD).view(1, 1, 3, 1, 1), persistent=False)

    def _run(
        self,
        block: Block,
        tokens: torch.Tensor,
        pos: RopeTable | None,
        query_weight: torch.Tensor | None = None,
        key_value: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One block, recomputed in backward when gradient checkpointing is on."""
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, tokens, pos, query_weight, key_value, use_reentrant=False)
        return block(tokens, pos, query_weight, key_value)

    def _positions(self, n: int, h: int, w: int, device: torch.device) -> torch.Tensor:
        """(n, P, 2) RoPE positions: (0, 0) for special tokens, patches at (row + 1, col + 1)."""
        pos = patch_positions(n, h, w, device) + 1
        special = pos.new_zeros(n, self.patch_start_idx, 2)
        return torch.cat([special, pos], dim=1)

    def forward(
        self, images: torch.Tensor, keep_layers: Collection[int] | None = None
    ) -> tuple[list[torch.Tensor | None], int, torch.Tensor]:
        """`keep_layers`: depth indices whose output to return (negative counts from the end); None: all."""
        batch, frames, _, height, width = images.shape
        keep = set(range(self.depth)) if keep_layers is None else {i % self.depth for i in keep_layers}
        h, w = height // self.patch_size, width // self.patch_size
        images = (images - self._resnet_mean) / self._resnet_std
        patch_tokens = self.patch_embed(images.reshape(batch * frames, 3, height, width))  # (B*S, h*w, C)
        tokens = torch.cat(
            [
                slice_expand_and_flatten(self.camera_token, batch, frames),
                slice_expand_and_flatten(self.register_token, batch, frames),
                patch_tokens,
            ],
            dim=1,
        )  # (B*S, P, C)
        _, num_tokens, dim = tokens.shape
        pos = pos_global = None
        if self.rope is not None:  # one rotation table per attention layout, shared by all blocks
            positions = self._positions(batch * frames, h, w, images.device)
            pos = self.rope.table(positions, self.head_dim)
            # (B*S, P, 2) -> (B, S*P, 2): global attention sees all frames
            pos_global = self.rope.table(positions.reshape(batch, frames * num_tokens, 2), self.head_dim)

        # The bias stays in the graph at strength 0 while gradients are on (the mask head then gets
        # zero, not missing, gradients); without gradients strength 0 runs plain attention.
        use_bias = self.mask_strength != 0.0 or torch.is_grad_enabled()
        m = bias = None
        outputs: list[torch.Tensor | None] = []
        for i in range(self.depth):
            tokens = tokens.reshape(batch * frames, num_tokens, dim)  # (B, S*P, C) -> (B*S, P, C)
            tokens = self._run(self.frame_blocks[i], tokens, pos)
            frame_out = tokens.reshape(batch, frames, num_tokens, dim)
            if i == self.mask_head_after_block:
                m = self.spatial_mask_head(frame_out.detach(), self.patch_start_idx, h, w)
                if use_bias:
                    bias = bias_inputs(m, self.patch_start_idx, self.mask_scale * self.mask_strength)
            tokens = tokens.reshape(batch, frames * num_tokens, dim)  # (B*S, P, C) -> (B, S*P, C)
            if i in self.bias_blocks and bias is not None:
                tokens = self._run(self.global_blocks[i], tokens, pos_global, *bias)
            else:
                tokens = self._run(self.global_blocks[i], tokens, pos_global)
            global_out = tokens.reshape(batch, frames, num_tokens, dim)
            outputs.append(torch.cat([frame_out, global_out], dim=-1) if i in keep else None)  # (B, S, P, 2C)
        return outputs, self.patch_start_idx, m
