"""Kubric / MOVi raw worker output (datasets.md section 3, form (b)): the layout PAGE-4D's training code reads.

Layout: one folder per scene, either `<root>/<split>/<scene>/` when `<root>/<split>/` exists, or a flat
`<root>/<scene>/` (PAGE-4D's layout, which has no split: every split then sees every scene; restrict them
with `sequences`). A scene folder holds `rgba_00000.png ...` (0-based, 5 digits), `depth_00000.tiff`
(float32 RAY distance to the camera centre, scene units ~ metres), `segmentation_00000.png` (palette PNG:
0 = background, k = `metadata["instances"][k - 1]`), `metadata.json` and `data_ranges.json` (flow ranges,
unused here). Kubric's writers: google-research/kubric `kubric/file_io.py`, `kubric/__init__.py`.

Conversions (done once, here):
- camera: `camera.positions` (T, 3) = centres in world, `camera.quaternions` (T, 4) = camera-to-world
  rotation, WXYZ, Blender/OpenGL camera axes (looks along -Z, +Y up) -> E = inv([R_gl diag(1,-1,-1) | p]).
- intrinsics: fx = fy = focal_length / sensor_width * W (mm, square pixels); Kubric puts the principal
  point at W/2 in the "pixel i spans [i, i+1]" convention, so OpenCV cx = W/2 - 0.5 (cy likewise).
- depth: z = d / |((u - cx)/fx, (v - cy)/fy, 1)| (the inverse of Kubric's `z_to_depth`), 0 where invalid.
- dynamic mask: an instance is dynamic in frame i when it moves within `motion_window` frames of i (its
  position spans more than `motion_threshold` scene units, or it turns more than `rotation_threshold`
  degrees); static objects and the background (segment 0) are static. MOVi's "static" distractors can be
  knocked over, so motion is read from the per-frame poses, not from the `is_dynamic` flag. The default
  window, (num_frames - 1) * max stride, is the span of the longest clip through frame i, so an object that
  moves anywhere in such a clip is dynamic in all of its frames. No tracks in this form (None).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.base import register_dataset
from datamodules.io import ClipFormatError, read_float_tiff, read_json, read_label_png, read_rgb
from datamodules.sequence import Frame, SequenceDataset
from page4d_lightning.geometry import quat_to_rotmat, wxyz_to_xyzw

logger = logging.getLogger(__name__)

FLIP_YZ = np.diag([1.0, -1.0, -1.0])  # Blender/OpenGL <-> OpenCV camera axes


def ray_to_z(distance: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Ray distance (H, W) to the camera centre -> z-depth (H, W), OpenCV pixel-centre K (3, 3)."""
    h, w = distance.shape
    x = (np.arange(w) - K[0, 2]) / K[0, 0]
    y = (np.arange(h) - K[1, 2]) / K[1, 1]
    norm = np.sqrt(x[None, :] ** 2 + y[:, None] ** 2 + 1.0)  # (H, W) length of the ray with z = 1
    return (distance / norm).astype(np.float32)


def _array(value: Any, shape: tuple[int | None, ...], what: str, path: Path) -> np.ndarray:
    """`value` as float64 of `shape` (None = any length), finite; ClipFormatError naming `path` otherwise."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ClipFormatError(f"{path}: {what} is not numeric") from None
    ok = array.ndim == len(shape) and all(s is None or s == n for s, n in zip(shape, array.shape))
    if not ok:
        raise ClipFormatError(f"{path}: {what} expected shape {shape} (None = any), got {array.shape}")
    if not np.isfinite(array).all():
        raise ClipFormatError(f"{path}: {what} holds NaN/inf")
    return array


def moving_frames(
    positions: np.ndarray, quaternions: np.ndarray, window: int, threshold: float, rotation_deg: float
) -> np.ndarray:
    """Per-instance motion flags: positions (I, T, 3), quaternions (I, T, 4) WXYZ -> (I, T) bool, True when the
    instance's position spans > `threshold` or it turns > `rotation_deg` degrees within frames [t - window,
    t + window]."""
    num, T = positions.shape[:2]
    q = quaternions / np.linalg.norm(quaternions, axis=-1, keepdims=True)
    out = np.zeros((num, T), dtype=bool)
    for t in range(T):
        lo, hi = max(0, t - window), min(T, t + window + 1)
        span = np.linalg.norm(positions[:, lo:hi].max(1) - positions[:, lo:hi].min(1), axis=-1)  # (I,)
        dots = np.abs(np.einsum("itk,ik->it", q[:, lo:hi], q[:, t])).clip(max=1.0)  # |<q_j, q_t>|, (I, W)
        turn = np.degrees(2 * np.arccos(dots)).max(1)  # (I,)
        out[:, t] = (span > threshold) | (turn > rotation_deg)
    return out


def parse_metadata(path: Path) -> dict[str, Any]:
    """A Kubric `metadata.json` -> camera centres (T, 3), Blender camera-to-world rotations (T, 3, 3), focal /
    sensor width, instance positions (I, T, 3) and WXYZ quaternions (I, T, 4); ClipFormatError naming `path`."""
    meta = read_json(path)
    cam = meta.get("camera") if isinstance(meta, dict) else None
    if not isinstance(cam, dict):
        raise ClipFormatError(f"{path}: expected a Kubric metadata.json with a 'camera' entry")
    missing = [k for k in ("positions", "quaternions", "focal_length", "sensor_width") if k not in cam]
    if missing:
        raise ClipFormatError(f"{path}: camera entry lacks {missing}")
    positions = _array(cam["positions"], (None, 3), "camera.positions", path)
    T = len(positions)
    quats = _array(cam["quaternions"], (T, 4), "camera.quaternions", path)
    focal = float(_array(cam["focal_length"], (), "camera.focal_length", path))
    sensor = float(_array(cam["sensor_width"], (), "camera.sensor_width", path))
    if focal <= 0 or sensor <= 0 or (np.linalg.norm(quats, axis=-1) < 1e-8).any():
        raise ClipFormatError(f"{path}: focal_length and sensor_width must be > 0 and quaternions non-zero")
    instances = meta.get("instances", [])
    if not isinstance(instances, list) or not all(isinstance(o, dict) for o in instances):
        raise ClipFormatError(f"{path}: 'instances' expected a list of objects")
    inst_pos = [_array(o.get("positions"), (T, 3), f"instances[{k}].positions", path) for k, o in enumerate(instances)]
    inst_quat = [
        _array(o.get("quaternions"), (T, 4), f"instances[{k}].quaternions", path) for k, o in enumerate(instances)
    ]
    if any((np.linalg.norm(q, axis=-1) < 1e-8).any() for q in inst_quat):
        raise ClipFormatError(f"{path}: an instance has a zero quaternion")
    return {
        "path": path,
        "positions": positions,
        "rotations_gl": quat_to_rotmat(wxyz_to_xyzw(quats)),  # camera-to-world, Blender camera axes
        "focal_over_sensor": focal / sensor,
        "instance_positions": np.stack(inst_pos) if inst_pos else np.zeros((0, T, 3)),
        "instance_quaternions": np.stack(inst_quat) if inst_quat else np.zeros((0, T, 4)),
    }


@register_dataset("kubric")
class KubricDataset(SequenceDataset):
    """Kubric raw worker scenes (module docstring: layout, conventions, how dynamic masks are derived).

    Args (besides `SequenceDataset`'s):
        dynamic_masks: derive per-frame dynamic masks from `segmentation_*.png` + instance motion.
        motion_window: half-width (frames) of the window an instance must move in to count as dynamic;
            None = (num_frames - 1) * max stride.
        motion_threshold: position span (scene units) above which an instance moves.
        rotation_threshold: rotation (degrees) above which an instance moves.
    """

    name = "kubric"
    is_metric = True
    sparse_depth = False

    def __init__(
        self,
        root: str | None = None,
        dynamic_masks: bool = True,
        motion_window: int | None = None,
        motion_threshold: float = 0.01,
        rotation_threshold: float = 1.0,
        **kwargs: Any,
    ) -> None:
        if motion_window is not None and motion_window < 1:
            raise ValueError(f"motion_window: expected >= 1 frame (or None), got {motion_window}")
        self.dynamic_masks = dynamic_masks
        self.motion_threshold, self.rotation_threshold = motion_threshold, rotation_threshold
        self._meta: dict[str, dict[str, Any]] = {}
        super().__init__(root, **kwargs)  # num_frames, image_size, normalize, split, ...: SequenceDataset's
        self.motion_window = motion_window or self.max_clip_span()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_meta"] = {}  # rebuilt lazily in each worker
        return state

    # ----------------------------------------------------------------------------------------- layout
    def scenes_dir(self) -> Path:
        """`<root>/<split>` when it exists, else the flat `<root>` (PAGE-4D's layout)."""
        split_dir = self.root / self.split
        return split_dir if split_dir.is_dir() else self.root

    def scene_dir(self, seq: str) -> Path:
        return self.scenes_dir() / seq

    def find_sequences(self) -> dict[str, int]:
        base = self.scenes_dir()
        if base == self.root and self.split != "train":
            logger.warning(
                "kubric: %s has no %r folder; using the flat root (all scenes) for split %r",
                self.root,
                self.split,
                self.split,
            )
        found = {}
        for scene in sorted(p for p in base.iterdir() if p.is_dir()):
            ids = [int(p.stem.split("_")[-1]) for p in scene.glob("rgba_*.png") if p.stem.split("_")[-1].isdigit()]
            if ids:
                found[scene.name] = max(ids) + 1  # frame index in the name == position; gaps raise at load
        if not found:
            raise ClipFormatError(
                f"{base}: no Kubric scenes found; expected <root>[/<split>]/<scene>/rgba_00000.png with "
                f"depth_00000.tiff, segmentation_00000.png and metadata.json"
            )
        return found

    # --------------------------------------------------------------------------------------- metadata
    def metadata(self, seq: str) -> dict[str, Any]:
        """Parsed `metadata.json` of scene `seq` (cached): camera arrays, focal/sensor ratio, motion table."""
        if seq not in self._meta:
            path = self.scene_dir(seq) / "metadata.json"
            meta = parse_metadata(path)
            positions, quats = meta.pop("instance_positions"), meta.pop("instance_quaternions")
            meta["moving"] = (
                moving_frames(positions, quats, self.motion_window, self.motion_threshold, self.rotation_threshold)
                if self.dynamic_masks
                else None
            )
            self._meta[seq] = meta
        return self._meta[seq]

    # ------------------------------------------------------------------------------------------ frames
    def load_frame(self, seq: str, index: int) -> Frame:
        scene = self.scene_dir(seq)
        rgb_path = scene / f"rgba_{index:05d}.png"
        image = read_rgb(rgb_path)
        h, w = image.shape[:2]
        meta = self.metadata(seq)
        if index >= len(meta["positions"]):
            raise ClipFormatError(
                f"{meta['path']}: camera has {len(meta['positions'])} frames, {rgb_path.name} needs frame {index}"
            )
        fx = meta["focal_over_sensor"] * w
        K = np.array([[fx, 0.0, w / 2 - 0.5], [0.0, fx, h / 2 - 0.5], [0.0, 0.0, 1.0]])
        R_c2w = meta["rotations_gl"][index] @ FLIP_YZ  # camera-to-world, OpenCV camera axes
        E = np.concatenate([R_c2w.T, -R_c2w.T @ meta["positions"][index][:, None]], axis=1)

        depth_path = scene / f"depth_{index:05d}.tiff"
        distance = read_float_tiff(depth_path)
        if distance.shape != (h, w):
            raise ClipFormatError(f"{depth_path}: depth has size {distance.shape}, expected {(h, w)} like the image")
        depth = ray_to_z(distance, K)
        depth[~np.isfinite(depth) | (depth <= 0)] = 0.0

        dynamic = None
        if self.dynamic_masks:
            seg_path = scene / f"segmentation_{index:05d}.png"
            labels = read_label_png(seg_path)
            moving = meta["moving"]
            if labels.shape != (h, w):
                raise ClipFormatError(f"{seg_path}: segmentation has size {labels.shape}, expected {(h, w)}")
            if labels.max(initial=0) > len(moving):
                raise ClipFormatError(
                    f"{seg_path}: segment id {labels.max()} but metadata.json lists "
                    f"{len(moving)} instances (id k = instances[k - 1])"
                )
            table = np.concatenate([[False], moving[:, index]])  # segment id -> dynamic; 0 = background
            dynamic = table[labels]
        return Frame(image=image, intrinsics=K, extrinsics=E, depth=depth, dynamic_mask=dynamic, source=str(rgb_path))
