"""File readers shared by the dataset classes; every failure names the file and what was expected.

All readers raise `ClipFormatError` (a `ValueError`) for a missing, truncated or malformed file, so a
dataset can catch one error type to skip a bad clip (`skip_bad_clips`) and `page4d data validate` can
collect every problem of a root in one run.
"""

from __future__ import annotations

import gzip
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = [
    "ClipFormatError",
    "read_rgb",
    "read_png_uint16",
    "read_float16_png",
    "read_mask_png",
    "read_label_png",
    "read_float_tiff",
    "read_exr",
    "read_npz",
    "read_npy",
    "read_json",
    "read_hdf5_array",
    "require_file",
]


class ClipFormatError(ValueError):
    """A dataset file is missing, truncated or holds values of the wrong kind. The message names the file."""


def require_file(path: str | Path, what: str = "file") -> Path:
    """`path` as a Path, or ClipFormatError when it does not exist."""
    path = Path(path)
    if not path.is_file():
        raise ClipFormatError(f"{path}: missing {what}")
    return path


def _open_image(path: str | Path, what: str) -> np.ndarray:
    return _open_image_with_mode(path, what)[0]


def _open_image_with_mode(path: str | Path, what: str) -> tuple[np.ndarray, str]:
    """(array, PIL mode as stored) of an image file; ClipFormatError naming the file when it is unreadable."""
    path = require_file(path, what)
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode in ("RGBA", "P", "L", "LA", "CMYK", "YCbCr", "1") and what == "RGB image":
                img = img.convert("RGB")
            array = np.asarray(img)
    except (OSError, UnidentifiedImageError, SyntaxError) as err:  # PIL: truncated / unknown data
        raise ClipFormatError(f"{path}: unreadable {what} (truncated or not an image): {err}") from None
    return array, mode


def read_rgb(path: str | Path) -> np.ndarray:
    """An 8-bit colour image (PNG/JPEG, RGB/RGBA/palette/grey) -> (H, W, 3) uint8 RGB."""
    array = _open_image(path, "RGB image")
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ClipFormatError(f"{path}: expected an 8-bit RGB image, got shape {array.shape} dtype {array.dtype}")
    return array


def read_png_uint16(path: str | Path) -> np.ndarray:
    """A single-channel 16-bit PNG -> (H, W) uint16 raw values (no scaling)."""
    array = _open_image(path, "16-bit PNG")
    if array.ndim != 2 or array.dtype not in (np.uint16, np.int32, np.uint8):
        raise ClipFormatError(
            f"{path}: expected a single-channel 16-bit PNG, got shape {array.shape} dtype {array.dtype}"
        )
    if array.dtype == np.uint8:
        raise ClipFormatError(f"{path}: expected a 16-bit PNG, got an 8-bit one")
    if array.dtype == np.int32:  # PIL opens some 16-bit PNGs as mode "I"
        if array.min() < 0 or array.max() > 65535:
            raise ClipFormatError(f"{path}: 16-bit PNG holds values outside [0, 65535]")
        array = array.astype(np.uint16)
    return array


def read_float16_png(path: str | Path) -> np.ndarray:
    """A 16-bit PNG whose values are float16 BITS (CO3D, Dynamic Replica depth) -> (H, W) float32."""
    raw = read_png_uint16(path)
    return raw.view(np.float16).astype(np.float32)  # reinterpret the bits, no scaling


def read_mask_png(path: str | Path, threshold: int = 0) -> np.ndarray:
    """A binary / grey / palette mask PNG -> (H, W) bool (value > threshold; colour images: any channel)."""
    array = _open_image(path, "mask PNG")
    if array.ndim == 3:
        array = array.max(axis=2)
    return array > threshold


def read_label_png(path: str | Path, allow_colour: bool = False) -> np.ndarray:
    """An instance-id PNG (palette / grey / 16-bit: the stored index) -> (H, W) int64 labels.

    With `allow_colour`, an RGB(A) PNG gets one label per colour (0xRRGGBB): the ids are then only
    consistent within the file. Kubric's `write_palette_png` (also used by PointOdyssey) writes palette PNGs.
    """
    array, mode = _open_image_with_mode(path, "label PNG")
    if array.ndim == 2 and mode in ("P", "L", "I", "I;16", "I;16B", "I;16L"):
        return array.astype(np.int64)
    if allow_colour and array.ndim == 3 and array.shape[2] in (3, 4) and array.dtype == np.uint8:
        rgb = array[..., :3].astype(np.int64)
        return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    raise ClipFormatError(
        f"{path}: expected a palette / grey label PNG holding instance ids, got mode {mode} shape {array.shape}"
    )


def read_float_tiff(path: str | Path) -> np.ndarray:
    """A single-channel float32 TIFF (Kubric depth) -> (H, W) float32."""
    array = _open_image(path, "float TIFF")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.floating):
        raise ClipFormatError(
            f"{path}: expected a single-channel float TIFF, got shape {array.shape} dtype {array.dtype}"
        )
    return array.astype(np.float32)


def read_exr(path: str | Path) -> np.ndarray:
    """A single-channel (or first channel of a) float EXR, as written by OpenCV (channel "Y" or "R") -> float32."""
    path = require_file(path, "EXR file")
    import OpenEXR  # imported here: only the readers of EXR data need it

    try:
        with OpenEXR.File(str(path)) as exr:
            channels = exr.channels()
            if not channels:
                raise ClipFormatError(f"{path}: EXR file has no channels")
            name = next((c for c in ("Y", "Z", "R", "depth") if c in channels), next(iter(channels)))
            array = np.asarray(channels[name].pixels)
    except ClipFormatError:
        raise
    except Exception as err:  # OpenEXR raises RuntimeError / OSError on corrupt data
        raise ClipFormatError(f"{path}: unreadable EXR file (truncated or corrupt): {err}") from None
    if array.ndim == 3:
        array = array[..., 0]
    return array.astype(np.float32)


def read_npz(path: str | Path, keys: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """All arrays of a .npz (pickles refused); ClipFormatError when it is corrupt or lacks one of `keys`."""
    path = require_file(path, ".npz file")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
        raise ClipFormatError(f"{path}: unreadable .npz (truncated or corrupt): {err}") from None
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise ClipFormatError(f"{path}: missing keys {missing}; found {sorted(arrays)}")
    return arrays


def read_npy(path: str | Path) -> np.ndarray:
    """One .npy array (pickles refused)."""
    path = require_file(path, ".npy file")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise ClipFormatError(f"{path}: unreadable .npy (truncated or corrupt): {err}") from None


def read_json(path: str | Path) -> Any:
    """A JSON file, or a gzipped one when the name ends in .gz / .jgz."""
    path = require_file(path, "JSON file")
    try:
        if path.suffix in (".gz", ".jgz"):
            with gzip.open(path, "rt", encoding="utf-8") as f:
                return json.load(f)
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, EOFError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ClipFormatError(f"{path}: unreadable JSON (truncated or corrupt): {err}") from None


def read_hdf5_array(path: str | Path, key: str) -> np.ndarray:
    """Dataset `key` of an HDF5 file (Spring .dsp5 / .flo5, packed shards)."""
    path = require_file(path, "HDF5 file")
    import h5py  # imported here: only HDF5-backed readers need it

    try:
        with h5py.File(path, "r") as f:
            if key not in f:
                raise ClipFormatError(f"{path}: HDF5 file has no dataset {key!r}; found {sorted(f.keys())}")
            return np.asarray(f[key][()])
    except ClipFormatError:
        raise
    except (OSError, KeyError, ValueError) as err:
        raise ClipFormatError(f"{path}: unreadable HDF5 file (truncated or corrupt): {err}") from None
