"""Dynamic Replica (Karaev et al., CVPR 2023): synthetic stereo videos of animated humans and animals in
Replica rooms. Metric (metres), with left-view point tracks.

Layout (datasets.md section 2; facebookresearch/dynamic_stereo, co-tracker `dr_dataset.py`):

```
<root>/<split>/frame_annotations_<split>.jgz     # gzipped JSON list, one entry per frame AND camera
<root>/<split>/<seq>_source_left/{images,depths,masks,trajectories,...}/   (and _source_right)
```

Every file path comes from the annotation entry (`image.path`, `depth.path`, `mask.path`,
`trajectories.path`), relative to `<root>/<split>`; `image.size` is (H, W). Our split names map to the
release folders: train -> train, val -> valid, test -> test (also `valid` and `real` as is).

- Cameras: `viewpoint` in PyTorch3D convention, NDC intrinsics (`datamodules.pytorch3d_cameras`).
- Depth: 16-bit PNG holding float16 bits, z-depth in metres; < `min_depth` (1e-5, the official loader's
  threshold) and non-finite values are invalid (0).
- Dynamic mask: the binary fg/bg `masks/`. The foreground of Dynamic Replica is the animated humans and
  animals, which are the only moving content (the rooms are static), so fg = dynamic.
- Tracks: `trajectories/%06d.pth` (left view only): `traj_2d` (N, 3), PyTorch3D screen x, y (+ depth), so
  OpenCV pixels are `traj_2d[:, :2] - 0.5`, like the principal point; `verts_inds_vis` (N,) visibility. The
  files are read with `torch.load(weights_only=True)`: they hold only tensors, and nothing else is unpickled.
"""

from __future__ import annotations

import logging
import pickle
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datamodules.base import register_dataset
from datamodules.io import ClipFormatError, read_json, read_mask_png, require_file
from datamodules.pytorch3d_cameras import (
    annotation_hw,
    depth_scale,
    entry_path,
    read_annotated_frame,
    read_pytorch3d_depth,
    screen_to_opencv,
)
from datamodules.sequence import Frame, SequenceDataset, Tracks

logger = logging.getLogger(__name__)

SPLIT_FOLDERS = {"train": "train", "val": "valid", "valid": "valid", "test": "test", "real": "real"}
CAMERAS = ("left", "right")


def _unsafe_globals(path: Path, err: Exception) -> str:
    """Names the classes / functions that made `torch.load(weights_only=True)` refuse `path`."""
    finder = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)  # torch >= 2.5
    if finder is not None:
        try:
            names = finder(path)
        except Exception:  # only for the message: fall back to torch's own text
            names = []
        if names:
            return f"Offending globals: {', '.join(names)}"
    return next((line.strip() for line in str(err).splitlines() if "Unsupported global" in line), "")


def load_trajectory(path: Path) -> dict[str, np.ndarray]:
    """One Dynamic Replica `trajectories/*.pth` -> {"traj_2d" (N, 3), "verts_inds_vis" (N,)} as numpy.

    Loaded with `weights_only=True`: a file that holds anything but tensors / plain containers is refused."""
    path = require_file(path, "trajectory file (.pth)")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ClipFormatError(
            f"{path}: refused to unpickle (torch.load weights_only=True): the file holds objects other than "
            f"tensors, while Dynamic Replica trajectories are dicts of tensors. {_unsafe_globals(path, err)}"
        ) from None
    except Exception as err:  # torch raises RuntimeError / KeyError / EOFError ... on truncated or foreign data
        raise ClipFormatError(f"{path}: unreadable trajectory file (truncated or corrupt): {err!r}"[:500]) from None
    if not isinstance(data, dict) or not {"traj_2d", "verts_inds_vis"} <= set(data):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ClipFormatError(f"{path}: expected a dict with traj_2d and verts_inds_vis, found {found}")
    out = {}
    for key in ("traj_2d", "verts_inds_vis"):
        if not isinstance(data[key], torch.Tensor):
            raise ClipFormatError(f"{path}: {key} is a {type(data[key]).__name__}, expected a tensor")
        out[key] = data[key].numpy()
    traj, vis = out["traj_2d"], out["verts_inds_vis"]
    if traj.ndim != 2 or traj.shape[1] < 2 or vis.shape != traj.shape[:1]:
        raise ClipFormatError(
            f"{path}: expected traj_2d (N, 3) and verts_inds_vis (N,), got {traj.shape} and {vis.shape}"
        )
    return out


@register_dataset("dynamic_replica")
class DynamicReplicaDataset(SequenceDataset):
    """Dynamic Replica clips (see the module docstring for the layout and conventions).

    Args:
        root, num_frames, image_size, normalize, **kwargs: see `SequenceDataset` (`split` picks the folder).
        camera: which stereo view to read, "left" (default; the only one with tracks) or "right".
        min_depth: depth values at or below this (metres) are invalid.
    """

    name = "dynamic_replica"
    is_metric = True

    def __init__(
        self,
        root: str | None = None,
        camera: str = "left",
        min_depth: float = 1e-5,
        **kwargs: Any,
    ) -> None:
        if camera not in CAMERAS:
            raise ValueError(f"camera: expected one of {CAMERAS}, got {camera!r}")
        self.camera, self.min_depth = camera, min_depth
        self._frames: dict[str, list[dict[str, Any]]] = {}
        super().__init__(root, **kwargs)  # num_frames, image_size, normalize, split, ...: SequenceDataset's

    @property
    def split_dir(self) -> Path:
        return self.root / SPLIT_FOLDERS.get(self.split, self.split)

    @property
    def annotation_file(self) -> Path:
        return self.split_dir / f"frame_annotations_{self.split_dir.name}.jgz"

    def find_sequences(self) -> dict[str, int]:
        path = self.annotation_file
        if not path.is_file():
            raise ClipFormatError(
                f"{path}: missing Dynamic Replica annotation file; expected <root>/<split>/"
                f"frame_annotations_<split>.jgz with split folders {sorted(set(SPLIT_FOLDERS.values()))}"
            )
        annotations = read_json(path)
        if not isinstance(annotations, list):
            raise ClipFormatError(f"{path}: expected a JSON list of frame annotations, got {type(annotations)}")
        frames: dict[str, list[dict[str, Any]]] = defaultdict(list)
        cameras = set()
        for k, entry in enumerate(annotations):
            try:
                seq, cam, number = entry["sequence_name"], entry.get("camera_name"), int(entry["frame_number"])
            except (KeyError, TypeError, ValueError, AttributeError):
                shown = repr(entry)[:200]
                raise ClipFormatError(f"{path}: entry {k} lacks sequence_name / frame_number: {shown}") from None
            cameras.add(cam)
            if cam == self.camera:
                entry["frame_number"] = number
                frames[seq].append(entry)
        if annotations and not frames:
            raise ClipFormatError(f"{path}: no frames of camera {self.camera!r}; camera_name values: {cameras}")
        for entries in frames.values():
            entries.sort(key=lambda e: e["frame_number"])
        self._frames = dict(frames)
        return {seq: len(entries) for seq, entries in frames.items()}

    def _where(self, seq: str, entry: dict[str, Any]) -> str:
        return f"{self.annotation_file} ({seq}, {self.camera}, frame {entry['frame_number']})"

    def _file(self, entry: dict[str, Any], key: str) -> Path | None:
        rel = entry_path(entry, key)
        return None if rel is None else self.split_dir / rel

    def load_frame(self, seq: str, index: int) -> Frame:
        entry = self._frames[seq][index]
        where = self._where(seq, entry)
        hw = annotation_hw(entry, where)
        image_path = self._file(entry, "image")
        if image_path is None:
            raise ClipFormatError(f"{where}: annotation has no image.path")
        image, extrinsics, intrinsics = read_annotated_frame(image_path, entry, hw, where)
        depth = None
        depth_path = self._file(entry, "depth")
        if depth_path is not None:
            depth = read_pytorch3d_depth(depth_path, depth_scale(entry), self.min_depth)
            if depth.shape != hw:
                raise ClipFormatError(f"{depth_path}: depth is {depth.shape} (H, W), expected {hw} like the image")
        dynamic = None
        mask_path = self._file(entry, "mask")
        if mask_path is not None:
            dynamic = read_mask_png(mask_path, threshold=127)  # masks store P(fg) * 255
            if dynamic.shape != hw:
                raise ClipFormatError(f"{mask_path}: mask is {dynamic.shape} (H, W), expected {hw} like the image")
        return Frame(image, intrinsics, extrinsics, depth, dynamic, source=str(image_path))

    def load_tracks(self, seq: str, ids: list[int]) -> Tracks | None:
        """Left-view mesh-vertex tracks over frames `ids` (native OpenCV pixels); None for the right view or
        when the annotations carry no trajectories (e.g. the `real` split)."""
        if self.camera != "left":
            return None
        entries = [self._frames[seq][i] for i in ids]
        paths = [self._file(e, "trajectories") for e in entries]
        if all(p is None for p in paths):
            return None
        points, visible = [], []
        for entry, path in zip(entries, paths):
            if path is None:
                raise ClipFormatError(f"{self._where(seq, entry)}: no trajectories.path while other frames have one")
            data = load_trajectory(path)
            if points and data["traj_2d"].shape[0] != points[0].shape[0]:
                raise ClipFormatError(
                    f"{path}: {data['traj_2d'].shape[0]} trajectories, expected {points[0].shape[0]} like the "
                    f"sequence's other frames"
                )
            points.append(screen_to_opencv(data["traj_2d"][:, :2]))
            visible.append(data["verts_inds_vis"].astype(bool))
        points_arr = np.stack(points)  # (S, N, 2)
        return Tracks(points_arr, np.stack(visible), np.isfinite(points_arr).all(-1))
