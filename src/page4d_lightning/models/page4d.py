"""PAGE4D: the full model (aggregator + camera / depth / point / track heads) and its presets."""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import TypedDict

import torch
from torch import nn

from .aggregator import Aggregator
from .heads.camera import CameraHead
from .heads.dpt import DPTHead
from .heads.track import TrackHead

logger = logging.getLogger(__name__)

#: tolerance on the [0, 1] image range (resampling overshoot).
IMAGE_RANGE_TOL = 0.05


class Predictions(TypedDict, total=False):
    """Output of `PAGE4D.forward` (official key names; `dynamic_mask` is ours)."""

    pose_enc: torch.Tensor  # (B, S, 9) absT_quaR_FoV, last camera-head iteration
    pose_enc_list: list[torch.Tensor]  # 4 x (B, S, 9), one per iteration
    depth: torch.Tensor  # (B, S, H, W, 1) z-depth, exp activation
    depth_conf: torch.Tensor  # (B, S, H, W) 1 + exp
    world_points: torch.Tensor  # (B, S, H, W, 3) first-camera frame, sign * expm1 activation
    world_points_conf: torch.Tensor  # (B, S, H, W) 1 + exp
    track: torch.Tensor  # (B, S, N, 2) input pixels, last iteration (with query points)
    track_list: list[torch.Tensor]  # iters x (B, S, N, 2)
    vis: torch.Tensor  # (B, S, N) visibility after sigmoid
    conf: torch.Tensor  # (B, S, N) track confidence after sigmoid
    images: torch.Tensor  # (B, S, 3, H, W) the input, eval mode only
    dynamic_mask: torch.Tensor  # (B, S, H/p, W/p) = 0.5 - m in (0, 1), 1 = suppressed (dynamic)


@dataclass
class PAGE4DConfig:
    """Plain numbers describing a PAGE4D; `vggt_1b()` is the official model, `tiny()` a CPU-sized twin.

    Both presets share the depth (24 frame + 24 global blocks), the mask-head / bias block indices
    and the DPT intermediate layers, so indices and freeze globs mean the same in both.
    """

    img_size: int = 518
    patch_size: int = 14
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_register_tokens: int = 4
    qk_norm: bool = True
    rope_freq: float = 100.0
    init_values: float = 0.01
    patch_embed_depth: int = 24
    patch_embed_num_heads: int = 16
    mask_head_after_block: int = 9
    bias_blocks: tuple[int, ...] = tuple(range(10, 20))
    mask_head_hidden: int = 256
    mask_scale: float = 64.0
    camera_trunk_depth: int = 4
    camera_num_heads: int = 16
    dpt_features: int = 256
    dpt_out_channels: tuple[int, ...] = (256, 512, 1024, 1024)
    intermediate_layer_idx: tuple[int, ...] = (4, 11, 17, 23)
    track_features: int = 128
    track_hidden_size: int = 384
    track_iters: int = 4
    track_stride: int = 2
    track_corr_levels: int = 7
    track_corr_radius: int = 4
    track_out_channels: tuple[int, ...] = (256, 512, 1024, 1024)
    track_depth: int = 6
    track_num_heads: int = 8
    track_num_virtual_tracks: int = 64
    enable_camera: bool = True
    enable_depth: bool = True
    enable_point: bool = True
    enable_track: bool = True
    gradient_checkpointing: bool = False

    @classmethod
    def vggt_1b(cls, enable_track: bool = True) -> PAGE4DConfig:
        """The official PAGE-4D / VGGT-1B numbers (ViT-L/14 reg4 encoder, 2 x 24 blocks at 1024)."""
        return cls(enable_track=enable_track)

    @classmethod
    def tiny(cls, enable_track: bool = False) -> PAGE4DConfig:
        """The official structure and depth at small widths: trains on a 2-core CPU."""
        return cls(
            embed_dim=64,
            num_heads=4,
            patch_embed_depth=2,
            patch_embed_num_heads=4,
            mask_head_hidden=16,
            camera_num_heads=4,
            dpt_features=32,
            dpt_out_channels=(16, 32, 64, 64),
            track_features=16,
            track_hidden_size=64,
            track_corr_levels=3,
            track_corr_radius=2,
            track_out_channels=(16, 32, 64, 64),
            track_depth=2,
            track_num_heads=4,
            track_num_virtual_tracks=16,
            enable_track=enable_track,
        )

    @classmethod
    def mini(cls, enable_track: bool = False) -> PAGE4DConfig:
        """The CPU miniature (`experiments/pretrain_static.yaml`): the official block roles at a third of the depth,
        8 frame + 8 global blocks at width 128. Mask head after block 2, dynamics bias in global blocks 3-6 (the
        middle half, which the "page4d" freeze policy trains), DPT taps (1, 3, 5, 7) for the official (4, 11, 17,
        23). Twice as fast per step on a CPU as `tiny`, at twice its width."""
        return cls.tiny(enable_track).replace(
            depth=8,
            embed_dim=128,
            mask_head_after_block=2,
            bias_blocks=(3, 4, 5, 6),
            intermediate_layer_idx=(1, 3, 5, 7),
        )

    def replace(self, **changes) -> PAGE4DConfig:
        """A copy with some fields changed (`dataclasses.replace`)."""
        return dataclasses.replace(self, **changes)


class PAGE4D(nn.Module):
    """PAGE-4D: images (S, 3, H, W) or (B, S, 3, H, W) in [0, 1] -> `Predictions`.

    H and W must be multiples of `patch_size`. Camera / depth / point heads run in float32 with
    autocast disabled, as officially; the track head runs under the caller's autocast. A new model
    has mask strength 0 (bias off, the official evaluation setting).
    """

    def __init__(self, config: PAGE4DConfig | None = None) -> None:
        super().__init__()
        cfg = dataclasses.replace(config or PAGE4DConfig())  # own copy: setters below update it
        self.config = cfg
        dim_in = 2 * cfg.embed_dim
        self.aggregator = Aggregator(
            img_size=cfg.img_size,
            patch_size=cfg.patch_size,
            embed_dim=cfg.embed_dim,
            depth=cfg.depth,
            num_heads=cfg.num_heads,
            mlp_ratio=cfg.mlp_ratio,
            num_register_tokens=cfg.num_register_tokens,
            qk_norm=cfg.qk_norm,
            rope_freq=cfg.rope_freq,
            init_values=cfg.init_values,
            patch_embed_depth=cfg.patch_embed_depth,
            patch_embed_num_heads=cfg.patch_embed_num_heads,
            mask_head_after_block=cfg.mask_head_after_block,
            bias_blocks=cfg.bias_blocks,
            mask_head_hidden=cfg.mask_head_hidden,
            mask_scale=cfg.mask_scale,
        )
        self.camera_head = (
            CameraHead(dim_in, trunk_depth=cfg.camera_trunk_depth, num_heads=cfg.camera_num_heads)
            if cfg.enable_camera
            else None
        )
        dpt_kwargs = dict(
            patch_size=cfg.patch_size,
            features=cfg.dpt_features,
            out_channels=cfg.dpt_out_channels,
            intermediate_layer_idx=cfg.intermediate_layer_idx,
        )
        self.point_head = (
            DPTHead(dim_in, output_dim=4, activation="inv_log", conf_activation="expp1", **dpt_kwargs)
            if cfg.enable_point
            else None
        )
        self.depth_head = (
            DPTHead(dim_in, output_dim=2, activation="exp", conf_activation="expp1", **dpt_kwargs)
            if cfg.enable_depth
            else None
        )
        self.track_head = (
            TrackHead(
                dim_in,
                patch_size=cfg.patch_size,
                features=cfg.track_features,
                iters=cfg.track_iters,
                stride=cfg.track_stride,
                corr_levels=cfg.track_corr_levels,
                corr_radius=cfg.track_corr_radius,
                hidden_size=cfg.track_hidden_size,
                out_channels=cfg.track_out_channels,
                intermediate_layer_idx=cfg.intermediate_layer_idx,
                depth=cfg.track_depth,
                num_heads=cfg.track_num_heads,
                num_virtual_tracks=cfg.track_num_virtual_tracks,
            )
            if cfg.enable_track
            else None
        )
        self.set_gradient_checkpointing(cfg.gradient_checkpointing)

    @property
    def mask_strength(self) -> float:
        """Current dynamics-bias strength s (bias 64 * s * m_j)."""
        return self.aggregator.mask_strength

    def set_mask_strength(self, strength: float) -> None:
        """Set the dynamics-bias strength s >= 0 (0 disables the bias; official evaluation uses 0)."""
        strength = float(strength)
        if not (math.isfinite(strength) and strength >= 0.0):
            raise ValueError(f"strength: expected a finite value >= 0, got {strength}")
        self.aggregator.mask_strength = strength

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute aggregator (and encoder) blocks in backward (torch.utils.checkpoint, non-reentrant)."""
        self.config.gradient_checkpointing = bool(enabled)
        self.aggregator.gradient_checkpointing = bool(enabled)
        self.aggregator.patch_embed.gradient_checkpointing = bool(enabled)

    def _check_inputs(
        self, images: torch.Tensor, query_points: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not isinstance(images, torch.Tensor) or images.dim() not in (4, 5):
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images: expected (S, 3, H, W) or (B, S, 3, H, W), got {shape}")
        if images.dim() == 4:
            images = images.unsqueeze(0)
        p = self.config.patch_size
        if images.shape[2] != 3 or images.shape[-1] % p or images.shape[-2] % p or images.shape[-1] == 0:
            raise ValueError(
                f"images: expected (B, S, 3, H, W) with H and W positive multiples of {p}, got {tuple(images.shape)}"
            )
        if not images.is_floating_point():
            raise ValueError(f"images: expected floating point values in [0, 1], got dtype {images.dtype}")
        lo, hi = torch.aminmax(images.detach())
        lo, hi = float(lo), float(hi)
        if not (lo >= -IMAGE_RANGE_TOL and hi <= 1 + IMAGE_RANGE_TOL):
            raise ValueError(
                f"images: expected values in [0, 1] (tolerance {IMAGE_RANGE_TOL}), got range [{lo:.4g}, {hi:.4g}]"
                " (images are not mean/std-normalised outside the model)"
            )
        if query_points is not None:
            if query_points.dim() == 2:
                query_points = query_points.unsqueeze(0)
            if query_points.dim() != 3 or query_points.shape[-1] != 2 or query_points.shape[0] != images.shape[0]:
                raise ValueError(
                    f"query_points: expected (N, 2) or (B, N, 2) with B = {images.shape[0]},"
                    f" got {tuple(query_points.shape)}"
                )
        return images, query_points

    def layers_read(self, query_points: torch.Tensor | None = None) -> set[int]:
        """Aggregator depth indices that this forward's heads read: the DPT heads' `intermediate_layer_idx`, the
        last one for the camera head, and the track head's when there are query points. Only those are kept."""
        depth = self.aggregator.depth
        layers = {depth - 1} if self.camera_head is not None else set()
        heads = [self.depth_head, self.point_head]
        if query_points is not None:
            heads.append(self.track_head)
        for head in heads:
            if head is not None:
                dpt = getattr(head, "feature_extractor", head)  # the track head reads through a DPT extractor
                layers |= {i % depth for i in dpt.intermediate_layer_idx}
        return layers

    def forward(self, images: torch.Tensor, query_points: torch.Tensor | None = None) -> Predictions:
        """images (S, 3, H, W) or (B, S, 3, H, W) in [0, 1]; query_points (N, 2) or (B, N, 2) pixels."""
        images, query_points = self._check_inputs(images, query_points)
        tokens_list, patch_start_idx, m = self.aggregator(images, keep_layers=self.layers_read(query_points))
        batch, frames, _, height, width = images.shape
        p = self.config.patch_size
        out: Predictions = {}
        with torch.autocast(device_type=images.device.type, enabled=False):
            if self.camera_head is not None:
                pose_enc_list = self.camera_head(tokens_list)
                out["pose_enc"] = pose_enc_list[-1]
                out["pose_enc_list"] = pose_enc_list
            if self.depth_head is not None:
                out["depth"], out["depth_conf"] = self.depth_head(
                    tokens_list, images=images, patch_start_idx=patch_start_idx
                )
            if self.point_head is not None:
                out["world_points"], out["world_points_conf"] = self.point_head(
                    tokens_list, images=images, patch_start_idx=patch_start_idx
                )
        if self.track_head is not None and query_points is not None:
            track_list, vis, conf = self.track_head(
                tokens_list, images=images, patch_start_idx=patch_start_idx, query_points=query_points
            )
            out["track"] = track_list[-1]
            out["track_list"] = track_list
            out["vis"] = vis
            out["conf"] = conf
        out["dynamic_mask"] = (0.5 - m).reshape(batch, frames, height // p, width // p)  # (B,S,h*w)->(B,S,h,w)
        if not self.training:
            out["images"] = images
        return out
