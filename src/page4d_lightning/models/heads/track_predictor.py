"""Iterative point tracker on dense feature maps (official VGGT `BaseTrackerPredictor`, after
CoTracker and VGGSfM).

Tracks start at the query position in every frame; each iteration samples the correlation pyramid
around the current estimates and lets the update transformer predict coordinate and feature
deltas. The first frame is pinned to the query.
"""

from __future__ import annotations

import torch
from torch import nn

from page4d_lightning.models.heads.pos_embed import get_2d_embedding, get_2d_sincos_pos_embed
from page4d_lightning.models.heads.track_blocks import EfficientUpdateFormer, Mlp
from page4d_lightning.models.heads.track_modules import CorrBlock, sample_features4d


class BaseTrackerPredictor(nn.Module):
    """Tracker over (B, S, C, h, w) feature maps whose pixels are `stride` image pixels.

    Args:
        stride: image pixels per feature-map pixel.
        corr_levels, corr_radius: pyramid levels and window radius of the correlation lookup.
        latent_dim: channels C of the feature maps and track features (a multiple of 4).
        hidden_size, depth, num_heads, num_virtual_tracks: the update transformer's width, number
            of time (and space) blocks, heads and virtual tracks.
        use_spaceatt: attend across tracks (through the virtual tracks).
        max_scale: flows are also fed raw, divided by this (pixels of the feature map).
        predict_conf: also predict a per-point confidence.
    """

    def __init__(
        self,
        stride: int = 1,
        corr_levels: int = 5,
        corr_radius: int = 4,
        latent_dim: int = 128,
        hidden_size: int = 384,
        use_spaceatt: bool = True,
        depth: int = 6,
        max_scale: int = 518,
        predict_conf: bool = True,
        num_heads: int = 8,
        num_virtual_tracks: int = 64,
    ) -> None:
        super().__init__()
        if latent_dim % 4 != 0:
            raise ValueError(f"latent_dim: expected a multiple of 4, got {latent_dim}")
        self.stride = stride
        self.latent_dim = latent_dim
        self.corr_levels = corr_levels
        self.corr_radius = corr_radius
        self.hidden_size = hidden_size
        self.max_scale = max_scale
        self.predict_conf = predict_conf
        self.flows_emb_dim = latent_dim // 2
        # transformer input = [flow embedding (C) + 2 x raw flow (4) | correlation (C) | track feature (C)]
        self.transformer_dim = 3 * latent_dim + 4

        self.corr_mlp = Mlp(corr_levels * (2 * corr_radius + 1) ** 2, hidden_size, latent_dim)
        self.query_ref_token = nn.Parameter(torch.randn(1, 2, self.transformer_dim))
        self.updateformer = EfficientUpdateFormer(
            space_depth=depth if use_spaceatt else 0,
            time_depth=depth,
            input_dim=self.transformer_dim,
            hidden_size=hidden_size,
            num_heads=num_heads,
            output_dim=latent_dim + 2,
            mlp_ratio=4.0,
            add_space_attn=use_spaceatt,
            num_virtual_tracks=num_virtual_tracks,
        )
        self.fmap_norm = nn.LayerNorm(latent_dim)
        self.ffeat_norm = nn.GroupNorm(1, latent_dim)
        self.ffeat_updater = nn.Sequential(nn.Linear(latent_dim, latent_dim), nn.GELU())
        self.vis_predictor = nn.Sequential(nn.Linear(latent_dim, 1))
        if predict_conf:
            self.conf_predictor = nn.Sequential(nn.Linear(latent_dim, 1))

    def forward(
        self,
        query_points: torch.Tensor,
        fmaps: torch.Tensor,
        iters: int = 6,
        down_ratio: int = 1,
        apply_sigmoid: bool = True,
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """query_points (B, N, 2) image pixels xy of frame 0, fmaps (B, S, C, h, w) ->
        (coord_preds: `iters` x (B, S, N, 2) image pixels, vis (B, S, N), conf (B, S, N) or None).

        vis/conf are probabilities with `apply_sigmoid`, logits otherwise. Coordinates are
        detached between iterations, so each prediction's gradient reaches only its own update.
        """
        if fmaps.dim() != 5 or fmaps.shape[2] != self.latent_dim:
            raise ValueError(f"fmaps: expected (B, S, {self.latent_dim}, h, w), got {tuple(fmaps.shape)}")
        B, S, C, h, w = fmaps.shape
        if query_points.dim() != 3 or query_points.shape[0] != B or query_points.shape[-1] != 2:
            raise ValueError(f"query_points: expected (B={B}, N, 2), got {tuple(query_points.shape)}")
        if iters < 1:
            raise ValueError(f"iters: expected >= 1, got {iters}")
        N = query_points.shape[1]

        fmaps = self.fmap_norm(fmaps.permute(0, 1, 3, 4, 2)).permute(0, 1, 4, 2, 3)  # LayerNorm over C
        query = query_points / float(down_ratio) if down_ratio > 1 else query_points
        query = query / float(self.stride)  # image pixels -> feature-map pixels
        coords = query.reshape(B, 1, N, 2).repeat(1, S, 1, 1)  # (B, N, 2) -> (B, S, N, 2)
        query_coords = coords[:, 0].clone()

        track_feats = sample_features4d(fmaps[:, 0], query_coords).unsqueeze(1).repeat(1, S, 1, 1)  # (B, S, N, C)
        corr_fn = CorrBlock(fmaps, num_levels=self.corr_levels, radius=self.corr_radius)

        # Constant over iterations: pixel-grid embedding at the query, and the query/other-frame tokens.
        pos_embed = get_2d_sincos_pos_embed(self.transformer_dim, (h, w), dtype=fmaps.dtype, device=fmaps.device)
        pos_at_query = sample_features4d(pos_embed.expand(B, -1, -1, -1), query_coords)  # (B, N, D)
        pos_at_query = pos_at_query.reshape(B * N, 1, self.transformer_dim)  # (B, N, D) -> (B*N, 1, D)
        ref_token = torch.cat(
            [self.query_ref_token[:, 0:1], self.query_ref_token[:, 1:2].expand(-1, S - 1, -1)], dim=1
        )  # (1, S, D): frame 0 gets token 0, the others token 1

        coord_preds = []
        for _ in range(iters):
            coords = coords.detach()
            corrs = corr_fn.corr_sample(track_feats, coords)  # (B, S, N, L)
            corrs = self.corr_mlp(corrs.permute(0, 2, 1, 3).reshape(B * N, S, -1))  # -> (B*N, S, C)

            flows = (coords - coords[:, 0:1]).permute(0, 2, 1, 3).reshape(B * N, S, 2)  # (B, S, N, 2) -> (B*N, S, 2)
            flows_emb = get_2d_embedding(flows, self.flows_emb_dim, cat_coords=False).to(flows.dtype)
            flows_emb = torch.cat([flows_emb, flows / self.max_scale, flows / self.max_scale], dim=-1)

            feats = track_feats.permute(0, 2, 1, 3).reshape(B * N, S, C)  # (B, S, N, C) -> (B*N, S, C)
            x = torch.cat([flows_emb, corrs, feats], dim=2) + pos_at_query + ref_token.to(fmaps.dtype)
            delta = self.updateformer(x.reshape(B, N, S, -1))  # (B*N, S, D) -> (B, N, S, D); out (B, N, S, C+2)
            delta = delta.reshape(B * N, S, -1)  # (B, N, S, C+2) -> (B*N, S, C+2)
            delta_coords, delta_feats = delta[..., :2], delta[..., 2:]

            feats = self.ffeat_updater(self.ffeat_norm(delta_feats.reshape(B * N * S, C))) + feats.reshape(B * N * S, C)
            track_feats = feats.reshape(B, N, S, C).permute(0, 2, 1, 3)  # (B*N*S, C) -> (B, S, N, C)

            coords = coords + delta_coords.reshape(B, N, S, 2).permute(0, 2, 1, 3)  # (B*N, S, 2) -> (B, S, N, 2)
            coords[:, 0] = query_coords  # the query frame stays at the query
            coord_preds.append(coords * (self.stride * down_ratio if down_ratio > 1 else self.stride))

        flat_feats = track_feats.reshape(B * S * N, C)  # (B, S, N, C) -> (B*S*N, C)
        vis = self.vis_predictor(flat_feats).reshape(B, S, N)
        conf = self.conf_predictor(flat_feats).reshape(B, S, N) if self.predict_conf else None
        if apply_sigmoid:
            vis = torch.sigmoid(vis)
            conf = torch.sigmoid(conf) if conf is not None else None
        return coord_preds, vis, conf
