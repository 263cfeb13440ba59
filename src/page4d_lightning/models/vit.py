"""DINOv2 ViT with register tokens: the patch embedding of the aggregator (ViT-L/14 reg4 in VGGT).

Only what the aggregator uses is implemented: images (B, 3, H, W) -> final-norm patch tokens
(B, H/p * W/p, C). Parameter names follow DINOv2 (`cls_token`, `pos_embed`, `register_tokens`,
`mask_token`, `patch_embed.proj`, `blocks.i`, `norm`) so that official weights load strictly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .layers import Block


class PatchEmbed(nn.Module):
    """Non-overlapping p x p conv: (B, 3, H, W) -> (B, H/p * W/p, C), row-major patches."""

    def __init__(self, patch_size: int = 14, in_chans: int = 3, embed_dim: int = 1024) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, C, h, w) -> (B, h*w, C)


class DinoVisionTransformer(nn.Module):
    """DINOv2 encoder with `num_register_tokens` registers and layer scale `init_values`.

    The learned position embedding covers a square grid of (img_size / patch_size)^2 patches and
    is resampled to other grids with bicubic interpolation (antialiased when `interpolate_antialias`);
    `interpolate_offset` > 0 selects DINOv2's scale-factor form (grid + offset) / M, 0 the exact
    output size (VGGT's aggregator builds it with offset 0 and antialias on).
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
        init_values: float = 1.0,
        interpolate_antialias: bool = True,
        interpolate_offset: float = 0.0,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.num_register_tokens = num_register_tokens
        self.interpolate_antialias = interpolate_antialias
        self.interpolate_offset = interpolate_offset
        self.gradient_checkpointing = False
        grid = img_size // patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, embed_dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim))
        # Unused by the aggregator (no masked tokens); kept frozen for state-dict parity with DINOv2.
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim), requires_grad=False)
        self.patch_embed = PatchEmbed(patch_size, 3, embed_dim)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, init_values=init_values, norm_eps=1e-6) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """DINOv2 init: trunc-normal(0.02) pos_embed and Linear weights, tiny cls/register tokens."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        nn.init.normal_(self.register_tokens, std=1e-6)
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def interpolate_pos_encoding(self, num_tokens: int, height: int, width: int) -> torch.Tensor:
        """Position embedding (1, 1 + h*w, C) for an image of `height` x `width` pixels."""
        grid_total = self.pos_embed.shape[1] - 1
        if num_tokens - 1 == grid_total and height == width:
            return self.pos_embed
        h0, w0 = height // self.patch_size, width // self.patch_size
        side = int(math.sqrt(grid_total))
        pos = self.pos_embed.float()
        dim = pos.shape[-1]
        if self.interpolate_offset:
            size_kw = {"scale_factor": ((h0 + self.interpolate_offset) / side, (w0 + self.interpolate_offset) / side)}
        else:
            size_kw = {"size": (h0, w0)}
        patch_pos = F.interpolate(
            pos[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2),  # (1, M*M, C) -> (1, C, M, M)
            mode="bicubic",
            antialias=self.interpolate_antialias,
            **size_kw,
        )
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, h0 * w0, dim)  # (1, C, h, w) -> (1, h*w, C)
        return torch.cat([pos[:, :1], patch_pos], dim=1).to(self.pos_embed.dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> final-norm patch tokens (B, H/p * W/p, C)."""
        _, _, height, width = images.shape
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.interpolate_pos_encoding(x.shape[1], height, width).to(x.dtype)
        # [cls, patches] -> [cls, registers, patches]
        x = torch.cat([x[:, :1], self.register_tokens.expand(x.shape[0], -1, -1), x[:, 1:]], dim=1)
        for block in self.blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.norm(x)[:, 1 + self.num_register_tokens :]
