"""Spring (Mehl et al., CVPR 2023): stereo videos of Blender scenes at 1920x1080, left and/or right camera.

Layout (datasets.md section 4; the official devkit cv-stuttgart/spring_utils defines the conventions), <eye> =
left or right::

    <root>/<split>/<seq>/frame_<eye>/frame_<eye>_0001.png          1-based, 4 digits, 8-bit RGB
    <root>/<split>/<seq>/disp1_<eye>/disp1_<eye>_0001.dsp5         HDF5, dataset "disparity", 2x the image size
    <root>/<split>/<seq>/cam_data/intrinsics.txt                   one line per frame: fx fy cx cy (pixels)
    <root>/<split>/<seq>/cam_data/extrinsics.txt                   one line per frame: 16 values, row-major 4x4
    <root>/<split>/<seq>/maps/skymap_<eye>/skymap_<eye>_0001.png   sky != 0; 2x (as third-party readers use it) or 1x

Conventions (converted once, in `load_frame`):
- depth: the devkit subsamples the 2x disparity with `[::2, ::2]` WITHOUT rescaling its values (they are in
  image-pixel units already) and converts with z = fx * 0.065 / disp, fx from intrinsics.txt. NaN / <= 0
  disparity and sky pixels (skymap) become 0. PAGE4D instead resizes the disparity and scales its values,
  which scales depth by 3840 / target width; we follow the devkit.
- extrinsics.txt is world-to-camera with OpenCV axes (as CUT3R, MonST3R and PAGE4D read it); its rotation is
  projected onto SO(3) by SVD (text precision) and rejected when it is not close to a rotation.
- principal point: the devkit back-projects integer pixel indices with (x - cx) / fx, i.e. cx, cy are
  in the OpenCV pixel-centre convention already: used as stored, no 0.5 shift.
- Sky maps: used when `maps/skymap_<eye>` exists (a missing file inside it is an error). A sequence without
  that folder (only the frame, disparity and camera archives downloaded) still trains: ONE warning per dataset
  names the folder, and its sky keeps only the disparity rule (<= 0 or NaN -> depth 0).
- Eyes (`eyes`): the sequence `<seq>` is the left camera (as before); `<seq>/right` is the right camera of the
  same folder. A clip never mixes eyes. The right camera is the left one shifted by the baseline b along the
  left camera's +x axis, with the same orientation and the same intrinsics.txt (a rectified pair:
  disparity = fx b / z with no offset): centre C_right = C_left + R^T (b, 0, 0), so with camera-from-world
  [R | t] of extrinsics.txt, t_right = t_left - (b, 0, 0). Check: a point at left-camera (x, y, z) sits at
  (x - b, y, z) in the right camera, so its right-image column is fx (x - b) / z + cx = u_left - d with
  d = fx b / z > 0: the devkit's convention (`dataloader.py`, SpringStereoDataset: "left-to-right disparity
  should be negative, which is not encoded in the data", i.e. a left pixel u appears at u - d on the right),
  and exactly what facebookresearch/map-anything's Spring conversion writes
  (`data_processing/wai_processing/scripts/conversion/spring.py`: right w2c = left w2c with [0, 3] -= 0.065).
  disp1_right holds the right view's positive disparity, so its depth is fx b / d as for the left. The
  official PAGE-4D reader (`training/data/datasets/spring.py:1020-1022`, `eyes: right` in `training_final.yaml:64-75`)
  instead gives right frames the unshifted left extrinsics (a 6.5 cm pose error); we do not copy that.
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
EYES = ("left", "right")
_LAYOUT = "<root>/<split>/<seq>/frame_{eye}/frame_{eye}_0001.png"


def _eyes(value: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The `eyes` argument -> a tuple of distinct eyes in (left, right) order; ValueError naming the argument."""
    names = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else None
    if not names or any(e not in EYES for e in names) or len(set(names)) != len(names):
        raise ValueError(f"eyes: expected a non-empty list of distinct eyes from {list(EYES)}, e.g. [left] or "
                         f"[left, right], got {value!r}")
    return tuple(e for e in EYES if e in names)


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
    """Spring clips: RGB, metric z-depth from disparity, cameras. See the module docstring.

    Args (after the `SequenceDataset` ones, e.g. `split="train"`):
        sky_mask: zero the depth of sky pixels with `maps/skymap_<eye>` where that folder exists (one warning
            per dataset when a sequence lacks it; its files are then required).
        baseline: stereo baseline in metres (0.065 in the devkit); also the right camera's offset.
        eyes: cameras to read, `[left]` (default) or `[left, right]` (or `[right]`): each sequence then appears
            once per eye, `<seq>` for the left camera and `<seq>/right` for the right one. The official run
            trains on both (kaichen-z/PAGE4D `training/config/training_final.yaml:64-75`, 2500 clips per eye).
    """

    name = "spring"
    is_metric = True

    def __init__(
        self,
        root: str | None = None,
        sky_mask: bool = True,
        baseline: float = SPRING_BASELINE,
        eyes: str | list[str] | tuple[str, ...] = ("left",),
        **kwargs,
    ) -> None:
        if not baseline > 0:
            raise ValueError(f"baseline: expected > 0 metres, got {baseline}")
        self.sky_mask, self.baseline, self.eyes = sky_mask, baseline, _eyes(eyes)
        self._tables: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # folder -> (intrinsics (N, 4), extrinsics (N, 16))
        self._streams: dict[str, tuple[str, str]] = {}  # sequence name -> (folder name, eye)
        self._has_depth: dict[str, bool] = {}  # sequence name -> disparity folder present
        self._has_sky: dict[str, bool] = {}  # sequence name -> sky map folder present (and used)
        super().__init__(root, **kwargs)  # num_frames, image_size, normalize, split, ...: SequenceDataset's

    def _seq_dir(self, seq: str) -> Path:
        """Folder of sequence name `seq` (`<seq>` or `<seq>/right`)."""
        return self.root / self.split / self._streams[seq][0]

    def find_sequences(self) -> dict[str, int]:
        split_dir = self.root / self.split
        if not split_dir.is_dir():
            raise ClipFormatError(f"{split_dir}: missing split folder; expected {_LAYOUT.format(eye=self.eyes[0])}")
        found, no_sky = {}, []
        for seq_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            for eye in self.eyes:
                name = seq_dir.name if eye == "left" else f"{seq_dir.name}/{eye}"
                frame_dir = seq_dir / f"frame_{eye}"
                if not frame_dir.is_dir():
                    raise ClipFormatError(f"{frame_dir}: missing folder; expected {_LAYOUT.format(eye=eye)}")
                pattern = re.compile(rf"frame_{eye}_(\d{{4}})\.png")
                numbers = [int(m.group(1)) for p in frame_dir.iterdir() if (m := pattern.fullmatch(p.name))]
                if not numbers or min(numbers) != 1:
                    raise ClipFormatError(f"{frame_dir}: expected frame_{eye}_0001.png ... (1-based), "
                                          f"found {len(numbers)}")
                disp_dir = seq_dir / f"disp1_{eye}"
                if not disp_dir.is_dir() and self.split != "test":
                    raise ClipFormatError(f"{disp_dir}: missing disparity folder (only `test` has none)")
                sky_dir = seq_dir / "maps" / f"skymap_{eye}"
                if self.sky_mask and disp_dir.is_dir() and not sky_dir.is_dir():
                    no_sky.append(sky_dir)
                self._streams[name] = (seq_dir.name, eye)
                self._has_depth[name] = disp_dir.is_dir()
                self._has_sky[name] = self.sky_mask and sky_dir.is_dir()
                found[name] = max(numbers)  # a missing middle file fails only the clips that use it
        if no_sky:
            logger.warning("spring: %s is missing (%d of %d sequences/eyes have no sky map folder): their sky pixels "
                           "are masked only where the disparity is <= 0 or NaN", no_sky[0], len(no_sky), len(found))
        return found

    def _camera_tables(self, seq: str) -> tuple[np.ndarray, np.ndarray]:
        folder = self._streams[seq][0]
        if folder not in self._tables:  # shared by both eyes
            cam_dir = self._seq_dir(seq) / "cam_data"
            intrinsics = _read_table(cam_dir / "intrinsics.txt", 4)
            self._tables[folder] = (intrinsics, _read_table(cam_dir / "extrinsics.txt", 16))
        return self._tables[folder]

    def _camera(self, seq: str, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Frame `index` (0-based) -> K (3, 3) pixels, extrinsics (3, 4) camera-from-world OpenCV of the
        sequence's eye (the right camera: t - (baseline, 0, 0), see the module docstring)."""
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
        extrinsics = np.concatenate([rotation, world_to_cam[:3, 3:]], axis=1)
        if self._streams[seq][1] == "right":
            extrinsics[0, 3] -= self.baseline  # centre C + R^T (b, 0, 0): same rotation, t - (b, 0, 0)
        return K, extrinsics

    def _depth(self, seq: str, number: int, fx: float, hw: tuple[int, int]) -> np.ndarray:
        """Metric z-depth (h, w) float32 of frame `number` (1-based) from its 2x disparity; 0 = invalid or sky."""
        seq_dir, eye = self._seq_dir(seq), self._streams[seq][1]
        path = seq_dir / f"disp1_{eye}" / f"disp1_{eye}_{number:04d}.dsp5"
        disparity = read_hdf5_array(path, "disparity")
        full = (2 * hw[0], 2 * hw[1])
        if disparity.shape != full or not np.issubdtype(disparity.dtype, np.floating):
            raise ClipFormatError(f"{path}: disparity is {disparity.shape} {disparity.dtype}, expected float {full} "
                                  f"(twice the {hw[1]}x{hw[0]} image)")
        disparity = disparity[::2, ::2].astype(np.float64)  # devkit: subsample, values already in image pixels
        valid = np.isfinite(disparity) & (disparity > 0)
        depth = np.zeros(hw, dtype=np.float64)
        depth[valid] = fx * self.baseline / disparity[valid]
        if self._has_sky[seq]:
            sky_path = seq_dir / "maps" / f"skymap_{eye}" / f"skymap_{eye}_{number:04d}.png"
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
        eye = self._streams[seq][1]
        image_path = self._seq_dir(seq) / f"frame_{eye}" / f"frame_{eye}_{number:04d}.png"
        image = read_rgb(image_path)
        K, extrinsics = self._camera(seq, index)
        depth = self._depth(seq, number, K[0, 0], image.shape[:2]) if self._has_depth[seq] else None
        return Frame(image=image, intrinsics=K, extrinsics=extrinsics, depth=depth, source=str(image_path))
