"""Typed views of the sample and batch dicts (DESIGN.md "Sample dict"); at runtime they stay plain dicts.

Conventions: images float32 in [0, 1]; depths z-depth, 0 = invalid; extrinsics camera-from-world OpenCV;
intrinsics in pixels of the network input; all geometry in the dataset's metric unit unless normalised
by `geometry.normalize_clip`, which then adds `scale`.
"""

from __future__ import annotations

from typing import Any, TypedDict

from torch import Tensor

__all__ = ["Sample", "Batch"]


class _SampleRequired(TypedDict):
    images: Tensor  # (S, 3, H, W) float32 in [0, 1], H and W multiples of 14
    depths: Tensor  # (S, H, W) z-depth, 0 = invalid
    extrinsics: Tensor  # (S, 3, 4) camera-from-world [R|t], OpenCV axes
    intrinsics: Tensor  # (S, 3, 3) pixels of the network input
    world_points: Tensor  # (S, H, W, 3) world coordinates
    cam_points: Tensor  # (S, H, W, 3) camera coordinates, OpenCV axes
    point_masks: Tensor  # (S, H, W) bool, True = valid GT pixel


class Sample(_SampleRequired, total=False):
    """One clip of S frames, as returned by a dataset's `__getitem__`."""

    dynamic_masks: Tensor  # (S, H, W) bool, True = dynamic (moving) content
    tracks: Tensor  # (S, N, 2) pixels of the input image; tracks[0] are the query points
    track_vis_mask: Tensor  # (S, N) bool, True = visible
    track_positive_mask: Tensor  # (N,) bool, True = a usable track
    scale: Tensor  # () float, the s that normalize_sample divided lengths by
    dataset: str  # dataset name (official names), for logging
    seq_name: str  # sequence name
    ids: Any  # (S,) frame indices inside the sequence (list[int] or int tensor)


class _BatchRequired(TypedDict):
    images: Tensor  # (B, S, 3, H, W) float32 in [0, 1]
    depths: Tensor  # (B, S, H, W) z-depth, 0 = invalid
    extrinsics: Tensor  # (B, S, 3, 4) camera-from-world [R|t], OpenCV axes
    intrinsics: Tensor  # (B, S, 3, 3) pixels
    world_points: Tensor  # (B, S, H, W, 3) world coordinates
    cam_points: Tensor  # (B, S, H, W, 3) camera coordinates
    point_masks: Tensor  # (B, S, H, W) bool, True = valid GT pixel


class Batch(_BatchRequired, total=False):
    """Default-collated samples (B clips) plus the official loss flags."""

    dynamic_masks: Tensor  # (B, S, H, W) bool
    tracks: Tensor  # (B, S, N, 2) pixels; tracks[:, 0] are the query points
    track_vis_mask: Tensor  # (B, S, N) bool
    track_positive_mask: Tensor  # (B, N) bool
    abandon_pose: Tensor  # (B,) bool, True = clip left out of the camera loss (default False)
    abandon_geometry: Tensor  # (B,) bool, any True zeroes the depth and point losses of the batch
    scale: Tensor  # (B,) float, the s of normalize_clip per clip
    dataset: list[str]  # (B,) dataset names
    seq_name: list[str]  # (B,) sequence names
    ids: Any  # collated frame indices: list of S (B,) tensors or a (B, S) tensor
