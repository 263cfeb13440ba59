"""`custom`: your own videos with cameras (and optionally depth and dynamic masks) in one documented layout.

    <root>/<sequence>/images/<frame>.png|.jpg|.jpeg   RGB frames; time order = natural sort of the names
                                                      ("2.png" before "10.png"; zero-padded names sort the same)
    <root>/<sequence>/cameras.json                    one camera per image (below)
    <root>/<sequence>/depth/<frame>.png|.npy          optional z-depth, same stem as the image: 16-bit PNG holding
                                                      metres x `depth_scale`, or a float .npy in metres;
                                                      0 / NaN / inf / negative = invalid
    <root>/<sequence>/masks/<frame>.png               optional dynamic masks, same stem (nonzero = moving)
    <root>/splits/train.txt, val.txt, test.txt        optional: one sequence name per line ('#' comments);
                                                      without a splits/ folder every split holds every sequence

cameras.json:

    {"convention": "opencv" | "opengl",        # camera axes: OpenCV x right, y down, z forward;
                                               # OpenGL / Blender / NeRF x right, y up, z backward
     "extrinsics_type": "w2c" | "c2w",         # world-to-camera (camera-from-world) or camera-to-world
     "depth_scale": 1000,                      # 16-bit PNG units per metre (default 1000 = millimetres)
     "intrinsics": [[fx, 0, cx], [0, fy, cy], [0, 0, 1]],   # optional default for every frame
     "frames": [{"file": "000000.png",         # image name (or stem); without "file" keys frames match the
                 "extrinsics": 4x4 or 3x4,     # sorted images by position; row-major nested lists
                 "intrinsics": 3x3 or {"fx": .., "fy": .., "cx": .., "cy": ..}}, ...]}

Intrinsics are pixels of the stored image with OpenCV pixel centres (pixel (0, 0) covers [-0.5, 0.5]); a
renderer that puts the image centre at exactly (W/2, H/2) uses the other convention: subtract 0.5 from cx, cy.
The world frame is kept as given (any axes, any origin); only the camera axes are converted. Depth is z-depth
(along the optical axis), not the distance along the ray. Sequences without depth give depth 0 and
`point_masks` False (cameras and images still train the camera head). `docs/custom_data.md` has a snippet
that writes a valid sequence from numpy arrays; `page4d data validate --dataset custom --root R` checks it.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from datamodules.base import register_dataset
from datamodules.io import ClipFormatError, read_json, read_mask_png, read_npy, read_png_uint16, read_rgb
from datamodules.sequence import Frame, SequenceDataset, reader_rotation
from page4d_lightning.geometry import se3_inverse

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
CONVENTIONS = ("opencv", "opengl")
EXTRINSICS_TYPES = ("w2c", "c2w")
TOP_LEVEL_KEYS = ("convention", "extrinsics_type", "depth_scale", "intrinsics", "frames")
FRAME_KEYS = ("file", "extrinsics", "intrinsics")
INTRINSICS_KEYS = ("fx", "fy", "cx", "cy")
_FLIP_YZ = np.diag([1.0, -1.0, -1.0])  # OpenGL camera axes <-> OpenCV camera axes (its own inverse)


def natural_key(name: str) -> list[Any]:
    """Sort key that orders digit runs by value: "f2" < "f10"."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _matrix(value: Any, shapes: tuple[tuple[int, int], ...], what: str, where: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ClipFormatError(f"{where}: {what} must be a nested list of numbers, got {value!r}") from None
    if array.shape not in shapes:
        raise ClipFormatError(f"{where}: {what} expected shape {' or '.join(map(str, shapes))}, got {array.shape}")
    if not np.isfinite(array).all():
        raise ClipFormatError(f"{where}: {what} holds NaN/inf")
    return array


def parse_extrinsics(value: Any, convention: str, extrinsics_type: str, where: str) -> np.ndarray:
    """A 4x4 / 3x4 pose as stored -> (3, 4) float64 camera-from-world, OpenCV axes, orthonormal R."""
    M = _matrix(value, ((4, 4), (3, 4)), "extrinsics", where)
    if M.shape == (4, 4) and np.abs(M[3] - [0.0, 0.0, 0.0, 1.0]).max() > 1e-6:
        raise ClipFormatError(
            f"{where}: extrinsics last row is {M[3].tolist()}, expected [0, 0, 0, 1] (row-major 4x4; transposed?)"
        )
    R = reader_rotation(M[:3, :3], f"{where}: extrinsics")  # nearest rotation: removes float32 / rounding drift
    E = np.concatenate([R, M[:3, 3:]], axis=1)
    if extrinsics_type == "c2w":
        E = se3_inverse(E)
    if convention == "opengl":  # same world, camera axes y and z flipped
        E = _FLIP_YZ @ E
    return E


def reject_unknown_keys(mapping: dict[str, Any], known: tuple[str, ...], where: str) -> None:
    """Raise `ClipFormatError` naming the keys of `mapping` outside `known` (a typo must not be ignored)."""
    unknown = sorted(set(mapping) - set(known))
    if unknown:
        raise ClipFormatError(f"{where}: unknown key(s) {unknown}; expected only {list(known)}")


def parse_intrinsics(value: Any, where: str) -> np.ndarray:
    """A 3x3 matrix or {fx, fy, cx, cy} -> (3, 3) float64 pixel K."""
    if isinstance(value, dict):
        reject_unknown_keys(value, INTRINSICS_KEYS, f"{where}: intrinsics")
        missing = [k for k in ("fx", "fy", "cx", "cy") if k not in value]
        if missing:
            raise ClipFormatError(f"{where}: intrinsics dict lacks {missing}; expected fx, fy, cx, cy in pixels")
        value = [[value["fx"], 0.0, value["cx"]], [0.0, value["fy"], value["cy"]], [0.0, 0.0, 1.0]]
    K = _matrix(value, ((3, 3),), "intrinsics", where)
    if np.abs(K[2] - [0.0, 0.0, 1.0]).max() > 1e-6 or K[1, 0] != 0.0:
        raise ClipFormatError(f"{where}: intrinsics expected [[fx, s, cx], [0, fy, cy], [0, 0, 1]], got {K.tolist()}")
    if max(abs(K[0, 0]), abs(K[1, 1]), abs(K[0, 2]), abs(K[1, 2])) <= 2.0:
        raise ClipFormatError(f"{where}: intrinsics look normalised ({K.tolist()}); expected pixels of the image")
    return K


def load_cameras(path: Path) -> dict[str, Any]:
    """cameras.json -> {"depth_scale", "by_stem" (stem -> (E, K) or an error message) or "by_index" (list)}."""
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("frames"), list):
        raise ClipFormatError(f"{path}: expected an object with a 'frames' list (see datamodules/custom.py)")
    reject_unknown_keys(data, TOP_LEVEL_KEYS, str(path))
    options = {"convention": CONVENTIONS, "extrinsics_type": EXTRINSICS_TYPES}
    for key, allowed in options.items():
        if data.get(key) not in allowed:
            raise ClipFormatError(f"{path}: '{key}' must be one of {allowed}, got {data.get(key)!r}")
    depth_scale = data.get("depth_scale", 1000)
    if not isinstance(depth_scale, (int, float)) or not depth_scale > 0:
        raise ClipFormatError(f"{path}: 'depth_scale' (PNG units per metre) must be > 0, got {depth_scale!r}")
    entries: list[tuple[np.ndarray, np.ndarray] | str] = []
    names = []
    for k, frame in enumerate(data["frames"]):
        name = frame.get("file") if isinstance(frame, dict) else None
        names.append(name)
        where = f"{path}: frame {name or k!r}"
        try:
            if not isinstance(frame, dict) or "extrinsics" not in frame:
                raise ClipFormatError(f"{where}: expected an object with 'extrinsics'")
            reject_unknown_keys(frame, FRAME_KEYS, where)
            if "intrinsics" not in frame and "intrinsics" not in data:
                raise ClipFormatError(f"{where}: no 'intrinsics' (per frame or at the top level)")
            K = parse_intrinsics(frame.get("intrinsics", data.get("intrinsics")), where)
            E = parse_extrinsics(frame["extrinsics"], data["convention"], data["extrinsics_type"], where)
            entries.append((E, K))
        except ClipFormatError as err:
            entries.append(str(err))
    table: dict[str, Any] = {"depth_scale": float(depth_scale)}
    if all(name is None for name in names):
        table["by_index"] = entries
        return table
    if any(not isinstance(name, str) for name in names):
        raise ClipFormatError(f"{path}: give every frame a 'file' (image name) or none of them (match by position)")
    stems = [Path(name).stem for name in names]
    if len(set(stems)) != len(stems):
        raise ClipFormatError(f"{path}: duplicate 'file' entries in 'frames'")
    table["by_stem"] = dict(zip(stems, entries))
    return table


@register_dataset("custom")
class CustomDataset(SequenceDataset):
    """Your own sequences in the layout of the module docstring (images + cameras.json, optional depth, masks).

    Extra args:
        metric: the depths and translations are in metres (False for up-to-scale SfM reconstructions).
    """

    name = "custom"

    def __init__(
        self,
        root: str | None = None,
        metric: bool = True,
        **kwargs: Any,
    ) -> None:
        self.is_metric = metric
        self._images: dict[str, list[Path]] = {}
        self._cameras: dict[str, dict[str, Any] | str] = {}  # sequence -> camera table, or its error message
        self._sizes: dict[str, tuple[int, int]] = {}  # sequence -> (h, w) of its first image
        super().__init__(root, **kwargs)  # num_frames, image_size, normalize, split, ...: SequenceDataset's

    # ------------------------------------------------------------------------------------ layout
    def _sequence_names(self) -> list[str]:
        split_dir = self.root / "splits"
        if split_dir.is_dir():
            split_file = split_dir / f"{self.split}.txt"
            if not split_file.is_file():
                raise ClipFormatError(f"{split_file}: missing split list (one sequence name per line)")
            lines = (line.split("#")[0].strip() for line in split_file.read_text(encoding="utf-8").splitlines())
            return [line for line in lines if line]
        if (self.root / "images").is_dir():
            raise ClipFormatError(f"{self.root}: holds images/ itself; set root to the folder ABOVE the sequence")
        return [p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")
                and ((p / "images").is_dir() or (p / "cameras.json").is_file())]

    def find_sequences(self) -> dict[str, int]:
        problems, found = [], {}
        for name in self._sequence_names():
            seq_dir = self.root / name
            images = sorted(
                (p for p in (seq_dir / "images").glob("*") if p.suffix.lower() in IMAGE_EXTENSIONS),
                key=lambda p: natural_key(p.name),
            )
            if not seq_dir.is_dir():
                problems.append(f"{seq_dir}: sequence listed in splits/{self.split}.txt does not exist")
            elif not images:
                problems.append(f"{seq_dir / 'images'}: no .png/.jpg images")
            elif not (seq_dir / "cameras.json").is_file():
                problems.append(f"{seq_dir / 'cameras.json'}: missing camera file")
            elif len({p.stem for p in images}) != len(images):
                problems.append(f"{seq_dir / 'images'}: two images share a stem (e.g. 0001.png and 0001.jpg)")
            else:
                self._images[name], found[name] = images, len(images)
        if problems:
            raise ClipFormatError(f"{self.root}: custom layout problems:\n  " + "\n  ".join(problems))
        return found

    def camera_table(self, seq: str) -> dict[str, Any]:
        """The parsed cameras.json of `seq` (cached; a file-level error is cached and raised again)."""
        if seq not in self._cameras:
            try:
                self._cameras[seq] = load_cameras(self.root / seq / "cameras.json")
            except ClipFormatError as err:
                self._cameras[seq] = str(err)
        table = self._cameras[seq]
        if isinstance(table, str):
            raise ClipFormatError(table)
        return table

    def _camera(self, seq: str, index: int, image: Path) -> tuple[np.ndarray, np.ndarray, float]:
        table = self.camera_table(seq)
        path = self.root / seq / "cameras.json"
        if "by_index" in table:
            entries = table["by_index"]
            if len(entries) != self.sequences[seq]:
                raise ClipFormatError(f"{path}: {len(entries)} frames for {self.sequences[seq]} images")
            entry = entries[index]
        elif image.stem in table["by_stem"]:
            entry = table["by_stem"][image.stem]
        else:
            raise ClipFormatError(f"{path}: no camera for image {image.name}")
        if isinstance(entry, str):
            raise ClipFormatError(entry)
        return entry[0], entry[1], table["depth_scale"]

    def _first_size(self, seq: str) -> tuple[int, int] | None:
        """(h, w) of the sequence's first image from its header (cached), or None when it is unreadable."""
        if seq not in self._sizes:
            try:
                with Image.open(self._images[seq][0]) as img:
                    self._sizes[seq] = (img.height, img.width)
            except (OSError, UnidentifiedImageError):
                return None  # that frame reports its own error
        return self._sizes[seq]

    # ------------------------------------------------------------------------------------ frames
    def load_frame(self, seq: str, index: int) -> Frame:
        image_path = self._images[seq][index]
        image = read_rgb(image_path)
        first = self._first_size(seq)
        if first is not None and image.shape[:2] != first:
            raise ClipFormatError(
                f"{image_path}: image is {image.shape[1]}x{image.shape[0]}, but {self._images[seq][0].name} is "
                f"{first[1]}x{first[0]}; all frames of a sequence must share one size"
            )
        extrinsics, intrinsics, depth_scale = self._camera(seq, index, image_path)
        h, w = image.shape[:2]
        if not (-0.5 <= intrinsics[0, 2] <= w - 0.5 and -0.5 <= intrinsics[1, 2] <= h - 0.5):
            raise ClipFormatError(
                f"{self.root / seq / 'cameras.json'}: principal point ({intrinsics[0, 2]}, {intrinsics[1, 2]}) of "
                f"{image_path.name} lies outside its {w}x{h} pixels; intrinsics of another resolution?"
            )
        depth = self._depth(seq, image_path.stem, depth_scale, (h, w))
        mask = None
        if (self.root / seq / "masks").is_dir():
            mask_path = self.root / seq / "masks" / f"{image_path.stem}.png"
            mask = read_mask_png(mask_path)
            if mask.shape != (h, w):
                raise ClipFormatError(f"{mask_path}: mask has size {mask.shape}, expected {(h, w)} like the image")
        return Frame(image, intrinsics, extrinsics, depth, mask, source=str(image_path))

    def _depth(self, seq: str, stem: str, depth_scale: float, hw: tuple[int, int]) -> np.ndarray | None:
        """z-depth (h, w) float32 metres, 0 = invalid; None when the sequence has no depth/ folder."""
        folder = self.root / seq / "depth"
        if not folder.is_dir():
            return None
        npy, png = folder / f"{stem}.npy", folder / f"{stem}.png"
        if npy.is_file():
            path, depth = npy, read_npy(npy)
            if not np.issubdtype(depth.dtype, np.floating):
                raise ClipFormatError(f"{npy}: depth .npy must be float metres, got dtype {depth.dtype}")
            depth = depth[..., 0] if depth.ndim == 3 and depth.shape[2] == 1 else depth
        elif png.is_file():
            path, depth = png, read_png_uint16(png).astype(np.float32) / np.float32(depth_scale)
        else:
            raise ClipFormatError(f"{png}: missing depth file (expected depth/{stem}.png or depth/{stem}.npy)")
        if depth.shape != hw:
            raise ClipFormatError(f"{path}: depth has size {depth.shape}, expected {hw} like the image")
        depth = depth.astype(np.float32)
        return np.where(np.isfinite(depth) & (depth > 0), depth, np.float32(0.0))
