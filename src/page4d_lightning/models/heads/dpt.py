"""DPT head (official VGGT `DPTHead`): multi-layer aggregator tokens -> dense maps.

Used three times in PAGE-4D: depth (`output_dim=2`, "exp"), world points (`output_dim=4`,
"inv_log") and, with `feature_only=True, down_ratio=2`, as the feature extractor of the track head.
State-dict names and shapes equal the official module's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from page4d_lightning.models.heads.activations import activate_head
from page4d_lightning.models.heads.dpt_blocks import (
    FeatureFusionBlock,
    chunked_interpolate,
    make_resize_layers,
    make_scratch,
)
from page4d_lightning.models.heads.pos_embed import create_uv_grid, position_grid_to_embed


class DPTHead(nn.Module):
    """Dense prediction head over four aggregator layers (Ranftl et al., "Vision Transformers for Dense
    Prediction"), with VGGT's UV position embedding and frame chunking.

    Args:
        dim_in: channels of the aggregator tokens (2C: frame and global attention outputs concatenated).
        patch_size: pixels per patch side.
        output_dim: output channels before activation; the last one is the confidence.
        activation, conf_activation: see `activations.activate_head`.
        features: width of the fusion path.
        out_channels: widths of the four projected token maps (each a multiple of 4 with `pos_embed`).
        intermediate_layer_idx: which entries of `aggregated_tokens_list` feed the four levels.
        pos_embed: add 0.1 x the sinusoidal UV embedding after projection and after upsampling.
        feature_only: return the fused (features)-channel map instead of activated predictions.
        down_ratio: the output is (H / down_ratio, W / down_ratio) pixels.
    """

    def __init__(
        self,
        dim_in: int,
        patch_size: int = 14,
        output_dim: int = 4,
        activation: str = "inv_log",
        conf_activation: str = "expp1",
        features: int = 256,
        out_channels: Sequence[int] = (256, 512, 1024, 1024),
        intermediate_layer_idx: Sequence[int] = (4, 11, 17, 23),
        pos_embed: bool = True,
        feature_only: bool = False,
        down_ratio: int = 1,
    ) -> None:
        super().__init__()
        if len(out_channels) != 4:
            raise ValueError(f"out_channels: expected 4 widths, got {tuple(out_channels)}")
        if len(intermediate_layer_idx) != 4:
            raise ValueError(f"intermediate_layer_idx: expected 4 indices, got {tuple(intermediate_layer_idx)}")
        if down_ratio < 1:
            raise ValueError(f"down_ratio: expected an integer >= 1, got {down_ratio}")
        if not feature_only and output_dim < 2:
            raise ValueError(f"output_dim: expected >= 2 (predictions + confidence), got {output_dim}")
        self.patch_size = patch_size
        self.activation = activation
        self.conf_activation = conf_activation
        self.pos_embed = pos_embed
        self.feature_only = feature_only
        self.down_ratio = down_ratio
        self.intermediate_layer_idx = tuple(int(i) for i in intermediate_layer_idx)

        self.norm = nn.LayerNorm(dim_in)
        self.projects = nn.ModuleList(
            [nn.Conv2d(dim_in, oc, kernel_size=1, stride=1, padding=0) for oc in out_channels]
        )
        self.resize_layers = make_resize_layers(out_channels)

        self.scratch = make_scratch(out_channels, features)
        self.scratch.refinenet1 = FeatureFusionBlock(features)
        self.scratch.refinenet2 = FeatureFusionBlock(features)
        self.scratch.refinenet3 = FeatureFusionBlock(features)
        self.scratch.refinenet4 = FeatureFusionBlock(features, has_residual=False)
        if feature_only:
            self.scratch.output_conv1 = nn.Conv2d(features, features, kernel_size=3, stride=1, padding=1)
        else:
            self.scratch.output_conv1 = nn.Conv2d(features, features // 2, kernel_size=3, stride=1, padding=1)
            self.scratch.output_conv2 = nn.Sequential(
                nn.Conv2d(features // 2, 32, kernel_size=3, stride=1, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(32, output_dim, kernel_size=1, stride=1, padding=0),
            )

    def forward(
        self,
        aggregated_tokens_list: Sequence[torch.Tensor],
        images: torch.Tensor,
        patch_start_idx: int,
        frames_chunk_size: int | None = 8,
    ) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
        """Tokens (B, S, P, dim_in) per layer and images (B, S, 3, H, W) in [0, 1] ->
        preds (B, S, H', W', output_dim - 1) and conf (B, S, H', W'), or, with `feature_only`,
        features (B, S, features, H', W'); H' = H / down_ratio, W' = W / down_ratio.

        Tokens [patch_start_idx:] of each frame are its (H/p) x (W/p) patches in row-major order.
        Frames are processed `frames_chunk_size` at a time (None or >= S: all at once) to bound
        memory; the result does not depend on the chunk size.
        """
        self._check_inputs(aggregated_tokens_list, images, patch_start_idx)
        S = images.shape[1]
        if frames_chunk_size is None or frames_chunk_size >= S:
            return self._forward_frames(aggregated_tokens_list, images, patch_start_idx, 0, S)
        if frames_chunk_size <= 0:
            raise ValueError(f"frames_chunk_size: expected None or a positive integer, got {frames_chunk_size}")
        outs = [
            self._forward_frames(aggregated_tokens_list, images, patch_start_idx, i, min(i + frames_chunk_size, S))
            for i in range(0, S, frames_chunk_size)
        ]
        if self.feature_only:
            return torch.cat(outs, dim=1)
        return torch.cat([o[0] for o in outs], dim=1), torch.cat([o[1] for o in outs], dim=1)

    def _check_inputs(self, tokens_list: Sequence[torch.Tensor], images: torch.Tensor, patch_start_idx: int) -> None:
        """Raise ValueError naming the argument when shapes do not fit together."""
        if images.dim() != 5 or images.shape[2] != 3:
            raise ValueError(f"images: expected (B, S, 3, H, W), got {tuple(images.shape)}")
        B, S, _, H, W = images.shape
        p = self.patch_size
        if H % p != 0 or W % p != 0:
            raise ValueError(f"images: H and W must be multiples of patch_size={p}, got H={H}, W={W}")
        if len(tokens_list) <= max(self.intermediate_layer_idx):
            raise ValueError(
                f"aggregated_tokens_list: expected more than {max(self.intermediate_layer_idx)} layers "
                f"(intermediate_layer_idx={self.intermediate_layer_idx}), got {len(tokens_list)}"
            )
        n_patch = (H // p) * (W // p)
        for i in self.intermediate_layer_idx:
            t = tokens_list[i]
            if t.dim() != 4 or t.shape[:2] != (B, S) or t.shape[2] - patch_start_idx != n_patch:
                raise ValueError(
                    f"aggregated_tokens_list[{i}]: expected (B={B}, S={S}, {patch_start_idx} + {n_patch}, C), "
                    f"got {tuple(t.shape)}"
                )

    def _forward_frames(
        self, tokens_list: Sequence[torch.Tensor], images: torch.Tensor, patch_start_idx: int, start: int, end: int
    ) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
        """The head on frames [start, end) only; same outputs as `forward` for those frames."""
        B, _, _, H, W = images.shape
        S = end - start
        patch_h, patch_w = H // self.patch_size, W // self.patch_size

        levels = []
        for level, layer_idx in enumerate(self.intermediate_layer_idx):
            x = tokens_list[layer_idx][:, start:end, patch_start_idx:]
            x = self.norm(x.reshape(B * S, patch_h * patch_w, x.shape[-1]))  # (B, S, P', C) -> (B*S, P', C)
            x = x.permute(0, 2, 1).reshape(B * S, -1, patch_h, patch_w)  # (B*S, P', C) -> (B*S, C, h, w)
            x = self.projects[level](x)
            if self.pos_embed:
                x = self._apply_pos_embed(x, W, H)
            levels.append(self.resize_layers[level](x))

        out = self._fuse(levels)
        out_size = (int(patch_h * self.patch_size / self.down_ratio), int(patch_w * self.patch_size / self.down_ratio))
        out = chunked_interpolate(out, size=out_size, align_corners=True)
        if self.pos_embed:
            out = self._apply_pos_embed(out, W, H)
        if self.feature_only:
            return out.reshape(B, S, *out.shape[1:])  # (B*S, C, H', W') -> (B, S, C, H', W')

        out = self.scratch.output_conv2(out)
        preds, conf = activate_head(out, activation=self.activation, conf_activation=self.conf_activation)
        preds = preds.reshape(B, S, *preds.shape[1:])  # (B*S, H', W', C-1) -> (B, S, H', W', C-1)
        conf = conf.reshape(B, S, *conf.shape[1:])  # (B*S, H', W') -> (B, S, H', W')
        return preds, conf

    def _fuse(self, levels: list[torch.Tensor]) -> torch.Tensor:
        """Four maps (finest first) -> fused (B*S, features or features/2, 4h, 4w) via refinenet4..1."""
        l1, l2, l3, l4 = (getattr(self.scratch, f"layer{i + 1}_rn")(x) for i, x in enumerate(levels))
        out = self.scratch.refinenet4(l4, size=l3.shape[2:])
        out = self.scratch.refinenet3(out, l3, size=l2.shape[2:])
        out = self.scratch.refinenet2(out, l2, size=l1.shape[2:])
        out = self.scratch.refinenet1(out, l1)
        return self.scratch.output_conv1(out)

    @staticmethod
    def _apply_pos_embed(x: torch.Tensor, W: int, H: int, ratio: float = 0.1) -> torch.Tensor:
        """x (B, C, h, w) + ratio * UV sin/cos embedding of the h x w grid, aspect W / H of the image."""
        h, w = x.shape[-2:]
        uv = create_uv_grid(w, h, aspect_ratio=W / H, dtype=x.dtype, device=x.device)  # (h, w, 2)
        emb = position_grid_to_embed(uv, x.shape[1]) * ratio  # (h, w, C)
        return x + emb.permute(2, 0, 1)[None].to(x.dtype)  # (h, w, C) -> (1, C, h, w)
