"""Synthetic dynamic scenes with exact ground truth: the project's embedded default dataset (no files).

A clip is a random room with furniture and 1-4 independently moving textured objects, seen by a moving
camera (`datamodules.synthetic.scene`), ray-cast and shaded (`datamodules.synthetic.render`). This module
follows surface points as 2D tracks and wraps it all in `SyntheticDynamicDataset` (and its DataModule).
Every value is exact: depths, points and tracks come from the analytic geometry, not from estimation.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.utils.data import Dataset

from datamodules.base import Page4DDataModule, register_dataset
from datamodules.sequence import parse_clip_key
from datamodules.synthetic.render import EPS, cast_rays, intrinsics_for, render
from datamodules.synthetic.scene import CHECKER_FREQUENCY, NOISE_FREQUENCY, Scene, sample_scene
from datamodules.transforms import output_size
from page4d_lightning.geometry import normalize_sample
from page4d_lightning.types import Sample

logger = logging.getLogger(__name__)

_VIS_REL_TOL = 1e-4  # relative depth slack of the track occlusion test


def _pick(g: torch.Generator, population: Tensor, count: int) -> Tensor:
    """`count` random entries of a 1-D population (without replacement when it is large enough)."""
    if count <= population.numel():
        return population[torch.randperm(population.numel(), generator=g)[:count]]
    return population[torch.randint(population.numel(), (count,), generator=g)]


def sample_tracks(
    g: torch.Generator, scene: Scene, intrinsics: Tensor, rendered: dict[str, Tensor], num_tracks: int
) -> tuple[Tensor, Tensor]:
    """Surface points picked at pixel centres of frame 0 (about half on moving objects), followed in all frames.

    Returns tracks (S, N, 2) pixels (x = column, y = row) and visibility (S, N) bool: in the image and
    nothing in front along the ray through the projection (exact ray-cast occlusion test).
    """
    S, H, W = rendered["depths"].shape
    dynamic0 = rendered["dynamic_masks"][0].reshape(-1)
    dyn_pixels, static_pixels = dynamic0.nonzero()[:, 0], (~dynamic0).nonzero()[:, 0]
    n_dyn = min(num_tracks // 2, dyn_pixels.numel()) if static_pixels.numel() else num_tracks
    picked = torch.cat([_pick(g, dyn_pixels, n_dyn), _pick(g, static_pixels, num_tracks - n_dyn)])
    picked = picked[torch.randperm(num_tracks, generator=g)]
    prim = rendered["prim"][0].reshape(-1)[picked].long()
    cam0 = rendered["cam_points"][0].reshape(-1, 3)[picked]  # (H, W, 3) -> (H*W, 3) -> (N, 3)
    hit0 = cam0 @ scene.cam_rotations[0].T + scene.cam_centers[0]  # in the scene's world frame: R_wc X + c
    local = ((hit0 - scene.centers[0, prim])[:, None, :] @ scene.rotations[0, prim])[:, 0]  # R^T (X - c)

    # surface points ride with their primitive: X_s = R_s local + c_s, (S, N, 3)
    world = (scene.rotations[:, prim] @ local[:, :, None])[..., 0] + scene.centers[:, prim]
    cam = (world - scene.cam_centers[:, None]) @ scene.cam_rotations  # row vectors: R_wc^T (X - o)
    z = cam[..., 2]
    d_cam = cam / z.clamp_min(1e-6)[..., None]
    uv = d_cam[..., :2] * intrinsics[[0, 1], [0, 1]] + intrinsics[[0, 1], [2, 2]]
    in_image = (z > EPS) & (uv[..., 0] >= -0.5) & (uv[..., 0] < W - 0.5) & (uv[..., 1] >= -0.5) & (uv[..., 1] < H - 0.5)
    dirs = (d_cam @ scene.cam_rotations.transpose(1, 2)).unbind(-1)  # row vectors: R_wc d, as planes (S, N)
    visible = in_image & (cast_rays(scene, scene.cam_centers, dirs)[0] >= z * (1 - _VIS_REL_TOL))
    # the queries are the exact pixel centres of frame 0, visible by construction
    uv[0] = torch.stack([picked % W, picked // W], dim=-1).float()
    visible[0] = True
    return torch.nan_to_num(uv, nan=0.0, posinf=1e6, neginf=-1e6), visible


def first_camera_poses(scene: Scene) -> tuple[Tensor, Tensor]:
    """The scene's camera path in camera 0's frame: world-from-camera rotations R_0^T R_s (S, 3, 3) and centres
    R_0^T (c_s - c_0) (S, 3), exactly the identity pose for s = 0."""
    rot0, c0 = scene.cam_rotations[0], scene.cam_centers[0]
    rotations, centres = rot0.T @ scene.cam_rotations, (scene.cam_centers - c0) @ rot0  # rows: R_0^T (c - c_0)
    rotations[0], centres[0] = torch.eye(3), 0.0  # exactly, not up to rounding
    return rotations, centres


def clip_generator(seed: int, split: str, index: int) -> torch.Generator:
    """A generator seeded from (seed, split, index) by a stable hash (independent of PYTHONHASHSEED)."""
    digest = hashlib.sha256(f"{seed}/{split}/{index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


@register_dataset("synthetic")
class SyntheticDynamicDataset(Dataset):
    """Procedural dynamic rooms with exact GT: one clip = S frames of a moving camera and 1-4 moving objects.

    `root` is ignored (kept for the common dataset signature). `image_size` is the width W (a multiple of
    14); H = round(W * aspect_ratio / 14) * 14, at least 14. Clip `index` is a pure function of
    (seed, split, index). Frames are `frame_interval` seconds apart (larger = more motion per clip).
    `checker_frequency` and `noise_frequency` are the texture bands in cycles per metre (default: fine,
    repetitive checkers; low bands such as (0.5, 1.5) and (0.3, 3.0) give large unrepeated patterns, which make
    frame-to-frame matching, and so relative pose, far less ambiguous). `object_speed` scales the objects'
    motion (0: the same objects stand still, a static scene).
    Returns the DESIGN.md sample dict; with `normalize=True` the GT is normalised by
    `page4d_lightning.geometry.normalize_sample` (which adds `scale`), built in camera 0's frame directly.
    """

    accepts_clip_keys: ClassVar[bool] = True  # takes (index, num_frames, aspect_ratio, epoch) keys

    def __init__(
        self,
        root: str | None = None,
        num_frames: int = 8,
        image_size: int = 224,
        normalize: bool = True,
        aspect_ratio: float = 1.0,
        num_clips: int = 1000,
        seed: int = 0,
        num_objects: tuple[int, int] = (1, 4),
        num_tracks: int = 64,
        split: str = "train",
        frame_interval: float = 0.1,
        checker_frequency: tuple[float, float] = CHECKER_FREQUENCY,
        noise_frequency: tuple[float, float] = NOISE_FREQUENCY,
        object_speed: float = 1.0,
    ) -> None:
        if not frame_interval > 0:
            raise ValueError(f"frame_interval: expected seconds between frames > 0, got {frame_interval}")
        if image_size <= 0 or image_size % 14:
            raise ValueError(f"image_size: expected a positive multiple of 14 (the width W), got {image_size}")
        if num_frames < 1:
            raise ValueError(f"num_frames: expected >= 1, got {num_frames}")
        if not aspect_ratio > 0:
            raise ValueError(f"aspect_ratio: expected H / W > 0, got {aspect_ratio}")
        if num_clips < 0 or num_tracks < 0:
            raise ValueError(f"num_clips, num_tracks: expected >= 0, got {num_clips}, {num_tracks}")
        if len(num_objects) != 2 or not 0 <= num_objects[0] <= num_objects[1]:
            raise ValueError(f"num_objects: expected (min, max) with 0 <= min <= max, got {num_objects}")
        for name, band in (("checker_frequency", checker_frequency), ("noise_frequency", noise_frequency)):
            if len(band) != 2 or not 0 < band[0] <= band[1]:
                raise ValueError(f"{name}: expected a band (lo, hi) in cycles per metre with 0 < lo <= hi, got {band}")
        if not object_speed >= 0:
            raise ValueError(f"object_speed: expected a motion scale >= 0 (0: the objects stand still), got "
                             f"{object_speed}")
        self.root = root
        self.num_frames = num_frames
        self.width = image_size
        self.height = max(14, round(image_size * aspect_ratio / 14) * 14)
        self.normalize = normalize
        self.num_clips = num_clips
        self.seed = seed
        self.num_objects = (int(num_objects[0]), int(num_objects[1]))
        self.num_tracks = num_tracks
        self.split = split
        self.frame_interval = frame_interval
        self.checker_frequency = (float(checker_frequency[0]), float(checker_frequency[1]))
        self.noise_frequency = (float(noise_frequency[0]), float(noise_frequency[1]))
        self.object_speed = float(object_speed)

    def __len__(self) -> int:
        return self.num_clips

    def build_scene(
        self, index: int, num_frames: int | None = None, height: int | None = None
    ) -> tuple[Scene, torch.Generator]:
        """The scene of clip `index` (S = `num_frames`, image height `height`; default: the dataset's), and its
        generator in the state that track sampling continues from."""
        g = clip_generator(self.seed, self.split, index)
        S, H = num_frames or self.num_frames, height or self.height
        scene = sample_scene(g, S, H / self.width, self.num_objects, self.frame_interval,
                             self.checker_frequency, self.noise_frequency, self.object_speed)
        return scene, g

    def __getitem__(self, key: int | tuple) -> Sample:
        """Clip `key`: an int, or `(index, num_frames, aspect_ratio, epoch)` from `datamodules.sampling` (the
        scene depends on the index only; the epoch is ignored: every index is its own clip)."""
        index, num_frames, aspect, _ = parse_clip_key(key)
        if not 0 <= index < self.num_clips:
            raise IndexError(f"index: expected 0 <= index < {self.num_clips}, got {index}")
        S, W = num_frames or self.num_frames, self.width
        H = self.height if aspect is None else output_size((1, 1), W, aspect)[0]
        scene, g = self.build_scene(index, S, H)
        # normalised GT lives in camera 0's frame: place the points there directly (as the real-data readers do)
        rotations, centres = first_camera_poses(scene) if self.normalize else (scene.cam_rotations, scene.cam_centers)
        intrinsics = intrinsics_for(scene.fov_x, H, W)
        rendered = render(scene, intrinsics, H, W, cameras=(rotations, centres))
        tracks, track_vis = sample_tracks(g, scene, intrinsics, rendered, self.num_tracks)
        rot_cw = rotations.transpose(1, 2)  # camera-from-world rotation R_wc^T
        sample = {
            "images": rendered["images"],
            "depths": rendered["depths"],
            "extrinsics": torch.cat([rot_cw, -(rot_cw @ centres[..., None])], dim=-1),
            "intrinsics": intrinsics.expand(S, 3, 3).clone(),
            "world_points": rendered["world_points"],
            "cam_points": rendered["cam_points"],
            "point_masks": rendered["depths"] > 0,
            "dynamic_masks": rendered["dynamic_masks"],
            "tracks": tracks,
            "track_vis_mask": track_vis,
            "track_positive_mask": torch.ones(self.num_tracks, dtype=torch.bool),
            "dataset": "synthetic",
            "seq_name": f"synthetic_{self.split}_{self.seed}_{index:06d}",
            "ids": torch.arange(S),
        }
        return normalize_sample(sample) if self.normalize else sample  # frame 0 is [I|0]: no transform


class SyntheticDataModule(Page4DDataModule):
    """`Page4DDataModule` over `SyntheticDynamicDataset` (no root). Per-split dicts set the dataset's other
    arguments, e.g. `{"num_clips": 16, "seed": 1, "split": "val"}`; None disables that split."""

    def __init__(self, image_size: int = 224, **kwargs: Any) -> None:
        """`image_size` defaults to 224 here; every other argument is `Page4DDataModule`'s."""
        super().__init__(dataset="synthetic", root=None, image_size=image_size, **kwargs)
