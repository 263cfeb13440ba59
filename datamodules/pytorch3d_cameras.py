"""PyTorch3D / Implicitron annotations -> the project's conventions (shared by Dynamic Replica and CO3D).

Both datasets store, per frame, a `viewpoint` with `R`, `T` in PyTorch3D's row-vector convention
(`X_view = X_world @ R + T`; view axes +X left, +Y up, +Z forward) and `focal_length`, `principal_point` in
PyTorch3D NDC, whose scale is given by `intrinsics_format`:

- `ndc_isotropic` (PyTorch3D >= 0.5): the shorter image side spans [-1, 1]: s_x = s_y = min(W, H) / 2;
- `ndc_norm_image_bounds` (legacy, the Implicitron schema default): both sides span [-1, 1]: s_x = W / 2,
  s_y = H / 2.

NDC +x points left and +y up, so screen x = W / 2 - x_ndc s_x (y alike). PyTorch3D's screen space lets pixel i
span [i, i + 1] (its centre is i + 0.5); our OpenCV convention puts integer coordinates at pixel centres, so
every screen coordinate (principal point, projected track) becomes `c - 0.5` here, once.

Depth PNGs hold float16 BITS in a 16-bit PNG (`io.read_float16_png`), scaled by `depth.scale_adjustment`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.io import ClipFormatError, read_float16_png, read_rgb
from page4d_lightning.geometry import nearest_rotation

__all__ = [
    "INTRINSICS_FORMATS",
    "depth_scale",
    "entry_path",
    "annotation_hw",
    "ndc_to_pixel_intrinsics",
    "opencv_from_pytorch3d",
    "read_pytorch3d_depth",
    "screen_to_opencv",
    "viewpoint_to_opencv",
]

INTRINSICS_FORMATS = ("ndc_isotropic", "ndc_norm_image_bounds")
P3D_TO_CV = np.diag([-1.0, -1.0, 1.0])  # PyTorch3D view axes (left, up, forward) -> OpenCV (right, down, forward)


def _array(value: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected numbers of shape {shape}, got {value!r}") from None
    if array.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: holds NaN/inf: {array.tolist()}")
    return array


def opencv_from_pytorch3d(R: Sequence | np.ndarray, T: Sequence | np.ndarray) -> np.ndarray:
    """PyTorch3D `R` (3, 3), `T` (3,) (X_view = X_world @ R + T) -> camera-from-world OpenCV (3, 4) float64.

    In column form X_view = R^T X_world + T; flipping the view x and y axes gives R_cv = P R^T, t_cv = P T with
    P = diag(-1, -1, 1). R_cv is re-orthonormalised (SVD); a matrix far from a rotation raises ValueError.
    """
    R = _array(R, (3, 3), "R")
    T = _array(T, (3,), "T")
    R_cv = nearest_rotation(P3D_TO_CV @ R.T, "R")  # ValueError naming R when it is not a rotation
    return np.concatenate([R_cv, (P3D_TO_CV @ T)[:, None]], axis=1)


def ndc_to_pixel_intrinsics(
    focal_length: Sequence | np.ndarray,
    principal_point: Sequence | np.ndarray,
    image_hw: Sequence[int],
    intrinsics_format: str,
) -> np.ndarray:
    """PyTorch3D NDC focal length (2,) and principal point (2,) of an image (H, W) -> pixel K (3, 3) float64,
    OpenCV pixel-centre convention (see the module docstring for the two `intrinsics_format`s)."""
    f = _array(focal_length, (2,), "focal_length")
    p = _array(principal_point, (2,), "principal_point")
    if len(image_hw) != 2 or min(image_hw) <= 0:
        raise ValueError(f"image_hw: expected (H, W) > 0, got {image_hw}")
    h, w = float(image_hw[0]), float(image_hw[1])
    fmt = str(intrinsics_format).lower()
    if fmt == "ndc_isotropic":
        scale = np.full(2, min(w, h) / 2.0)
    elif fmt == "ndc_norm_image_bounds":
        scale = np.array([w / 2.0, h / 2.0])
    else:
        raise ValueError(f"intrinsics_format: expected one of {INTRINSICS_FORMATS}, got {intrinsics_format!r}")
    if not (f > 0).all():
        raise ValueError(f"focal_length: expected > 0, got {f.tolist()}")
    centre = np.array([w / 2.0, h / 2.0]) - p * scale - 0.5  # screen (pixel spans [i, i+1]) -> OpenCV
    fx, fy = f * scale
    return np.array([[fx, 0.0, centre[0]], [0.0, fy, centre[1]], [0.0, 0.0, 1.0]])


def viewpoint_to_opencv(viewpoint: Mapping[str, Any], image_hw: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """An Implicitron `viewpoint` dict (R, T, focal_length, principal_point, intrinsics_format) of an image
    (H, W) -> (extrinsics (3, 4) camera-from-world OpenCV, intrinsics (3, 3) pixels). ValueError when malformed."""
    if not isinstance(viewpoint, Mapping):
        raise ValueError(f"viewpoint: expected a dict, got {type(viewpoint).__name__}")
    missing = [k for k in ("R", "T", "focal_length", "principal_point") if k not in viewpoint]
    if missing:
        raise ValueError(f"viewpoint: missing fields {missing}; found {sorted(viewpoint)}")
    fmt = viewpoint.get("intrinsics_format", "ndc_norm_image_bounds")  # the Implicitron schema default
    extrinsics = opencv_from_pytorch3d(viewpoint["R"], viewpoint["T"])
    intrinsics = ndc_to_pixel_intrinsics(viewpoint["focal_length"], viewpoint["principal_point"], image_hw, fmt)
    return extrinsics, intrinsics


def screen_to_opencv(uv: np.ndarray) -> np.ndarray:
    """PyTorch3D screen pixels (..., 2) (pixel i spans [i, i+1]) -> OpenCV pixel-centre coordinates (..., 2)."""
    return np.asarray(uv, dtype=np.float64) - 0.5


def entry_path(entry: dict[str, Any], key: str) -> str | None:
    """The relative path of frame-annotation field `key` (a {"path": ...} dict or a plain string), or None."""
    value = entry.get(key)
    if isinstance(value, dict):
        value = value.get("path")
    return value if isinstance(value, str) and value else None


def depth_scale(entry: dict[str, Any]) -> float:
    """`depth.scale_adjustment` (depth = png * scale_adjustment; 1.0 when absent)."""
    depth = entry.get("depth")
    value = depth.get("scale_adjustment") if isinstance(depth, dict) else None
    return 1.0 if value is None else value


def annotation_hw(entry: dict[str, Any], where: str) -> tuple[int, int]:
    """`image.size` of an Implicitron frame annotation as (H, W) ints."""
    try:
        h, w = (int(v) for v in entry["image"]["size"])
    except (KeyError, TypeError, ValueError):
        h = w = 0
    if h <= 0 or w <= 0:
        raise ClipFormatError(f"{where}: expected image.size = [H, W] > 0, got {entry.get('image')!r}")
    return h, w


def read_pytorch3d_depth(path: str | Path, scale_adjustment: float = 1.0, min_depth: float = 0.0) -> np.ndarray:
    """Float16-bits depth PNG -> (H, W) float32 z-depth `png * scale_adjustment`, 0 where invalid
    (non-finite or <= `min_depth`; Dynamic Replica's own loader uses 1e-5)."""
    try:
        scale = float(scale_adjustment)
    except (TypeError, ValueError):
        scale = float("nan")
    if not (np.isfinite(scale) and scale > 0):
        raise ClipFormatError(f"{path}: depth scale_adjustment must be finite and > 0, got {scale_adjustment!r}")
    depth = read_float16_png(path) * np.float32(scale)
    depth[~np.isfinite(depth) | (depth <= min_depth)] = 0.0
    return depth


def read_annotated_frame(image_path: Path, entry: dict[str, Any], hw: tuple[int, int], where: str
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(RGB image, OpenCV extrinsics (3, 4), pixel intrinsics (3, 3)) of one CO3D / Dynamic Replica frame
    annotation; ClipFormatError when the image size disagrees with the annotation or the viewpoint is bad."""
    image = read_rgb(image_path)
    if image.shape[:2] != hw:
        raise ClipFormatError(f"{image_path}: image is {image.shape[:2]} (H, W), its annotation says {hw}")
    try:
        extrinsics, intrinsics = viewpoint_to_opencv(entry.get("viewpoint"), hw)
    except ValueError as err:
        raise ClipFormatError(f"{where}: bad viewpoint: {err}") from None
    return image, extrinsics, intrinsics
