"""Spring (Mehl et al., CVPR 2023): stereo videos of Blender scenes at 1920x1080, read from the left camera.

Layout (datasets.md section 4; the official devkit cv-stuttgart/spring_utils defines the conventions)::

    <root>/<split>/<seq>/frame_left/frame_left_0001.png        1-based, 4 digits, 8-bit RGB
    <root>/<split>/<seq>/disp1_left/disp1_left_0001.dsp5       HDF5, dataset "disparity", 2x the image size
    <root>/<split>/<seq>/cam_data/intrinsics.txt               one line per frame: fx fy cx cy (pixels)
    <root>/<split>/<seq>/cam_data/extrinsics.txt               one line per frame: 16 values, row-major 4x4
    <root>/<split>/<seq>/maps/skymap_left/skymap_left_0001.png sky != 0; 2x (as third-party readers use it) or 1x

Conventions (converted once, in `load_frame`):
- depth: the devkit subsamples the 2x disparity with `[::2, ::2]` WITHOUT rescaling its values (they are in
  image-pixel units already) and converts with z = fx * 0.065 / disp, fx from intrinsics.txt. NaN / <= 0
  disparity and sky pixels (skymap) become 0. PAGE4D instead resizes the disparity and scales its values,
  which scales depth by 3840 / target width; we follow the devkit.
- extrinsics.txt is world-to-camera with OpenCV axes (as CUT3R, MonST3R and PAGE4D read it); its rotation is
  projected onto SO(3) by SVD (text precision) and rejected when it is not close to a rotation.
- principal point: the devkit back-projects integer pixel indices with (x - cx) / fx, i.e. cx, cy are
  in the OpenCV pixel-centre convention already: used as stored, no 0.5 shift.
- Left camera only: the devkit does not say how the right camera's extrinsics relate to extrinsics.txt.
- No dynamic masks (the semantics of `maps/rigidmap_*` are unverified) and no tracks.
- Splits: `split` names the folder under root (`train`; `test` has no disparity, so depth is None there).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from datamodules.base import register_dataset
from datamodules.io import ClipFormatError, read_hdf5_array, read_mask_png, read_rgb, require_file
from datamodules.sequence import Frame, SequenceDataset, reader_rotation

logger = logging.getLogger(__name__)

SPRING_BASELINE = 0.065  # metres between the stereo cameras (devkit `SPRING_BASELINE`)
_FRAME = re.compile(r"frame_left_(\d{4})\.png")
_LAYOUT = "<root>/<split>/<seq>/frame_left/frame_left_0001.png"


def _read_table(path: Path, columns: int) -> np.ndarray:
    """A whitespace-separated text table with `columns` numbers per line -> (N, columns) float64."""
    path = require_file(path, "camera file")
    try:
        table = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as err:
        raise ClipFormatError(f"{path}: unreadable camera table: {err}") from None
    if table.shape[1] != columns:
        raise ClipFormatError(f"{path}: expected {columns} numbers per line, got {table.shape[1]}")
    return table


@register_dataset("spring")
class SpringDataset(SequenceDataset):
    """Spring clips (left camera): RGB, metric z-depth from disparity, cameras. See the module docstring.

    Args (after the `SequenceDataset` ones, e.g. `split="train"`):
        sky_mask: zero the depth of sky pixels with `maps/skymap_left` (the file is then required).
        baseline: stereo baseline in metres (0.065 in the devkit).
    """

    name = "spring"
    is_metric = True

    def __init__(
        self,
        root: str | None = None,
        sky_mask: bool = True,
        baseline: float = SPRING_BASELINE,
        **kwargs,
    ) -> None:
        if not baseline > 0:
            raise ValueError(f"baseline: expected > 0 metres, got {baseline}")
        self.sky_mask, self.baseline = sky_mask, baseline
        self._tables: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # seq -> (intrinsics (N, 4), extrinsics (N, 16))
        self._has_depth: dict[str, bool] = {}
        super().__init__(root, **kwargs)  # num_frames, image_size, normalize, split, ...: SequenceDataset's

    def _seq_dir(self, seq: str) -> Path:
        return self.root / self.split / seq

    def find_sequences(self) -> dict[str, int]:
        split_dir = self.root / self.split
        if not split_dir.is_dir():
            raise ClipFormatError(f"{split_dir}: missing split folder; expected {_LAYOUT}")
        found = {}
        for seq_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            frame_dir = seq_dir / "frame_left"
            if not frame_dir.is_dir():
                raise ClipFormatError(f"{frame_dir}: missing folder; expected {_LAYOUT}")
            numbers = [int(m.group(1)) for p in frame_dir.iterdir() if (m := _FRAME.fullmatch(p.name))]
            if not numbers or min(numbers) != 1:
                raise ClipFormatError(f"{frame_dir}: expected frame_left_0001.png ... (1-based), found {len(numbers)}")
            has_depth = (seq_dir / "disp1_left").is_dir()
            if not has_depth and self.split != "test":
                raise ClipFormatError(f"{seq_dir / 'disp1_left'}: missing disparity folder (only `test` has none)")
            self._has_depth[seq_dir.name] = has_depth
            found[seq_dir.name] = max(numbers)  # a missing middle file fails only the clips that use it
        return found

    def _camera_tables(self, seq: str) -> tuple[np.ndarray, np.ndarray]:
        if seq not in self._tables:
            cam_dir = self._seq_dir(seq) / "cam_data"
            intrinsics = _read_table(cam_dir / "intrinsics.txt", 4)
            self._tables[seq] = (intrinsics, _read_table(cam_dir / "extrinsics.txt", 16))
        return self._tables[seq]

    def _camera(self, seq: str, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Frame `index` (0-based) -> K (3, 3) pixels, extrinsics (3, 4) camera-from-world OpenCV."""
        intrinsics, extrinsics = self._camera_tables(seq)
        cam_dir = self._seq_dir(seq) / "cam_data"
        line = index + 1
        for table, file in ((intrinsics, "intrinsics.txt"), (extrinsics, "extrinsics.txt")):
            if index >= len(table):
                raise ClipFormatError(f"{cam_dir / file}: {len(table)} lines, frame {line} needs line {line}")
        fx, fy, cx, cy = intrinsics[index]
        if not (np.isfinite(intrinsics[index]).all() and fx > 0 and fy > 0):
            raise ClipFormatError(f"{cam_dir / 'intrinsics.txt'}: line {line} is not a valid fx fy cx cy: "
                                  f"{intrinsics[index]}")
        world_to_cam = extrinsics[index].reshape(4, 4)  # row-major 4x4
        where = f"{cam_dir / 'extrinsics.txt'}: line {line}"
        if not np.isfinite(world_to_cam).all():
            raise ClipFormatError(f"{where} holds NaN/inf")
        if np.abs(world_to_cam[3] - [0.0, 0.0, 0.0, 1.0]).max() > 1e-6:
            raise ClipFormatError(f"{where}: last row is {world_to_cam[3]}, expected [0 0 0 1]")
        rotation = reader_rotation(world_to_cam[:3, :3], where)
        K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
        return K, np.concatenate([rotation, world_to_cam[:3, 3:]], axis=1)

    def _depth(self, seq: str, number: int, fx: float, hw: tuple[int, int]) -> np.ndarray:
        """Metric z-depth (h, w) float32 of frame `number` (1-based) from its 2x disparity; 0 = invalid or sky."""
        seq_dir = self._seq_dir(seq)
        path = seq_dir / "disp1_left" / f"disp1_left_{number:04d}.dsp5"
        disparity = read_hdf5_array(path, "disparity")
        full = (2 * hw[0], 2 * hw[1])
        if disparity.shape != full or not np.issubdtype(disparity.dtype, np.floating):
            raise ClipFormatError(f"{path}: disparity is {disparity.shape} {disparity.dtype}, expected float {full} "
                                  f"(twice the {hw[1]}x{hw[0]} image)")
        disparity = disparity[::2, ::2].astype(np.float64)  # devkit: subsample, values already in image pixels
        valid = np.isfinite(disparity) & (disparity > 0)
        depth = np.zeros(hw, dtype=np.float64)
        depth[valid] = fx * self.baseline / disparity[valid]
        if self.sky_mask:
            sky_path = seq_dir / "maps" / "skymap_left" / f"skymap_left_{number:04d}.png"
            sky = read_mask_png(sky_path)
            if sky.shape == full:
                sky = sky[::2, ::2]  # third-party readers subsample it like the disparity (2x); 1x is accepted too
            elif sky.shape != hw:
                raise ClipFormatError(f"{sky_path}: sky map is {sky.shape}, expected {full} or {hw}")
            depth[sky] = 0.0
        depth[~np.isfinite(depth)] = 0.0
        return depth.astype(np.float32)

    def load_frame(self, seq: str, index: int) -> Frame:
        number = index + 1
        image_path = self._seq_dir(seq) / "frame_left" / f"frame_left_{number:04d}.png"
        image = read_rgb(image_path)
        K, extrinsics = self._camera(seq, index)
        depth = self._depth(seq, number, K[0, 0], image.shape[:2]) if self._has_depth[seq] else None
        return Frame(image=image, intrinsics=K, extrinsics=extrinsics, depth=depth, source=str(image_path))
