"""Track head (official VGGT `TrackHead`): a feature-only DPT at half resolution + the iterative tracker."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from page4d_lightning.models.heads.dpt import DPTHead
from page4d_lightning.models.heads.track_predictor import BaseTrackerPredictor


class TrackHead(nn.Module):
    """Aggregator tokens + query pixels -> per-frame tracks, visibility and confidence.

    The official arguments keep their defaults; `out_channels`, `intermediate_layer_idx`,
    `depth`, `num_heads` and `num_virtual_tracks` only exist so that a tiny preset can shrink the
    feature extractor and the update transformer (the official values are their defaults).

    Args:
        dim_in: channels of the aggregator tokens.
        patch_size: pixels per patch side.
        features: channels of the tracking feature maps (a multiple of 4).
        iters: default number of refinement iterations.
        predict_conf: also return a per-point confidence.
        stride: image pixels per feature-map pixel (the extractor runs at H/2 x W/2, so 2).
        corr_levels, corr_radius: correlation pyramid levels and lookup radius; the half-resolution
            feature map must be at least 2**(corr_levels-1) pixels on each side.
        hidden_size: width of the update transformer.
    """

    def __init__(
        self,
        dim_in: int,
        patch_size: int = 14,
        features: int = 128,
        iters: int = 4,
        predict_conf: bool = True,
        stride: int = 2,
        corr_levels: int = 7,
        corr_radius: int = 4,
        hidden_size: int = 384,
        out_channels: Sequence[int] = (256, 512, 1024, 1024),
        intermediate_layer_idx: Sequence[int] = (4, 11, 17, 23),
        depth: int = 6,
        num_heads: int = 8,
        num_virtual_tracks: int = 64,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.iters = iters
        self.feature_extractor = DPTHead(
            dim_in=dim_in,
            patch_size=patch_size,
            features=features,
            out_channels=out_channels,
            intermediate_layer_idx=intermediate_layer_idx,
            pos_embed=False,
            feature_only=True,
            down_ratio=2,
        )
        self.tracker = BaseTrackerPredictor(
            stride=stride,
            corr_levels=corr_levels,
            corr_radius=corr_radius,
            latent_dim=features,
            hidden_size=hidden_size,
            depth=depth,
            predict_conf=predict_conf,
            num_heads=num_heads,
            num_virtual_tracks=num_virtual_tracks,
        )

    def forward(
        self,
        aggregated_tokens_list: Sequence[torch.Tensor],
        images: torch.Tensor,
        patch_start_idx: int,
        query_points: torch.Tensor,
        iters: int | None = None,
        frames_chunk_size: int | None = 8,
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """Tokens (B, S, P, dim_in) per layer, images (B, S, 3, H, W), query_points (B, N, 2) pixels
        xy in frame 0 -> (coord_preds: `iters` x (B, S, N, 2) pixels, vis (B, S, N) in (0, 1),
        conf (B, S, N) in (0, 1) or None without `predict_conf`).

        `iters` defaults to the constructor's; `frames_chunk_size` bounds the feature extractor's
        memory as in `DPTHead.forward`.
        """
        if query_points is None or query_points.dim() != 3 or query_points.shape[-1] != 2:
            shape = None if query_points is None else tuple(query_points.shape)
            raise ValueError(f"query_points: expected (B, N, 2) pixels, got {shape}")
        if query_points.shape[0] != images.shape[0]:
            raise ValueError(
                f"query_points: batch {query_points.shape[0]} does not match images batch {images.shape[0]}"
            )
        feature_maps = self.feature_extractor(
            aggregated_tokens_list, images, patch_start_idx, frames_chunk_size=frames_chunk_size
        )  # (B, S, features, H/2, W/2)
        return self.tracker(query_points=query_points, fmaps=feature_maps, iters=self.iters if iters is None else iters)
