"""PyTorch3D -> OpenCV camera conversion and float16-bits depth decoding (shared by Dynamic Replica and CO3D).

Independent references: PyTorch3D's own definitions written out here (row-vector X_view = X @ R + T, view +X
left / +Y up, NDC -> screen x = W/2 - x_ndc s, pixel i spanning [i, i+1]) and hand-computed pixel values.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from datamodules.io import ClipFormatError
from datamodules.pytorch3d_cameras import (
    annotation_hw,
    ndc_to_pixel_intrinsics,
    opencv_from_pytorch3d,
    read_pytorch3d_depth,
    screen_to_opencv,
    viewpoint_to_opencv,
)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def test_extrinsics_flip_view_x_and_y_and_transpose_r():
    rng = np.random.default_rng(0)
    for _ in range(5):
        R, T = _random_rotation(rng), rng.normal(size=3)
        E = opencv_from_pytorch3d(R.tolist(), T.tolist())
        X = rng.normal(size=(10, 3))
        view = X @ R + T  # PyTorch3D, row vectors
        cam = X @ E[:, :3].T + E[:, 3]  # OpenCV, column convention
        np.testing.assert_allclose(cam, view * [-1, -1, 1], atol=1e-12)
        assert E.dtype == np.float64 and E.shape == (3, 4)
    np.testing.assert_allclose(opencv_from_pytorch3d(np.eye(3), np.zeros(3))[:, :3], np.diag([-1.0, -1.0, 1.0]))


def test_float16_rotation_is_reorthonormalised():
    R = _random_rotation(np.random.default_rng(1))
    R16 = R.astype(np.float16).astype(np.float64)
    assert np.abs(R16 @ R16.T - np.eye(3)).max() > 1e-5  # the stored matrix is not a rotation
    R_cv = opencv_from_pytorch3d(R16, np.zeros(3))[:, :3]
    np.testing.assert_allclose(R_cv @ R_cv.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(R_cv) == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(R_cv, np.diag([-1.0, -1.0, 1.0]) @ R.T, atol=2e-3)


@pytest.mark.parametrize(
    ("R", "T", "match"),
    [
        (np.diag([1.0, 1.0, -1.0]), np.zeros(3), "rotation"),  # a reflection
        (2 * np.eye(3), np.zeros(3), "rotation"),
        (np.full((3, 3), np.nan), np.zeros(3), "R: holds NaN"),
        (np.eye(3), [0.0, np.inf, 0.0], "T: holds NaN"),
        (np.eye(2), np.zeros(3), r"R: expected shape \(3, 3\)"),
        ("abc", np.zeros(3), "R: expected numbers"),
    ],
)
def test_bad_extrinsics_raise(R, T, match):
    with pytest.raises(ValueError, match=match):
        opencv_from_pytorch3d(R, T)


def test_intrinsics_hand_computed_values():
    # 100 x 50 image (W x H); f = (2, 2), p = (0.1, -0.2) in NDC
    iso = ndc_to_pixel_intrinsics([2.0, 2.0], [0.1, -0.2], (50, 100), "ndc_isotropic")  # s = min(W, H) / 2 = 25
    np.testing.assert_allclose(iso, [[50.0, 0, 50 - 2.5 - 0.5], [0, 50.0, 25 + 5 - 0.5], [0, 0, 1]])
    legacy = ndc_to_pixel_intrinsics([2.0, 2.0], [0.1, -0.2], (50, 100), "NDC_NORM_IMAGE_BOUNDS")  # s = (50, 25)
    np.testing.assert_allclose(legacy, [[100.0, 0, 50 - 5 - 0.5], [0, 50.0, 25 + 5 - 0.5], [0, 0, 1]])


@pytest.mark.parametrize("fmt", ["ndc_isotropic", "ndc_norm_image_bounds"])
def test_projection_matches_pytorch3d_screen_space(fmt):
    rng = np.random.default_rng(2)
    h, w = 48, 80
    R, T = _random_rotation(rng), np.array([0.1, -0.2, 5.0])
    f, p = np.array([1.7, 1.9]), np.array([0.05, -0.08])
    X = rng.normal(size=(20, 3)) @ R.T * 0.5  # near the origin, in front of the camera (view z ~ 5)
    view = X @ R + T
    s = np.full(2, min(h, w) / 2) if fmt == "ndc_isotropic" else np.array([w / 2, h / 2])
    screen = np.array([w / 2, h / 2]) - (f * view[:, :2] / view[:, 2:] + p) * s  # PyTorch3D transform_points_screen
    E, K = viewpoint_to_opencv(
        {"R": R.tolist(), "T": T.tolist(), "focal_length": f.tolist(), "principal_point": p.tolist(),
         "intrinsics_format": fmt},
        (h, w),
    )
    cam = X @ E[:, :3].T + E[:, 3]
    uv = cam[:, :2] / cam[:, 2:] @ K[:2, :2].T + K[:2, 2]
    np.testing.assert_allclose(uv, screen_to_opencv(screen), atol=1e-9)
    np.testing.assert_allclose(screen_to_opencv([[0.5, 0.5]]), [[0.0, 0.0]])  # first pixel centre


def test_viewpoint_defaults_and_errors():
    vp = {"R": np.eye(3).tolist(), "T": [0, 0, 1], "focal_length": [1.0, 1.0], "principal_point": [0.0, 0.0]}
    _, K = viewpoint_to_opencv(vp, (20, 40))  # no intrinsics_format: the Implicitron default (legacy bounds)
    np.testing.assert_allclose(np.diag(K)[:2], [20.0, 10.0])
    with pytest.raises(ValueError, match="intrinsics_format"):
        viewpoint_to_opencv({**vp, "intrinsics_format": "screen"}, (20, 40))
    with pytest.raises(ValueError, match=r"missing fields \['T'\]"):
        viewpoint_to_opencv({k: v for k, v in vp.items() if k != "T"}, (20, 40))
    with pytest.raises(ValueError, match="focal_length: expected > 0"):
        viewpoint_to_opencv({**vp, "focal_length": [0.0, 1.0]}, (20, 40))
    with pytest.raises(ValueError, match="viewpoint: expected a dict"):
        viewpoint_to_opencv(None, (20, 40))
    with pytest.raises(ValueError, match="image_hw"):
        ndc_to_pixel_intrinsics([1, 1], [0, 0], (0, 40), "ndc_isotropic")
    with pytest.raises(ClipFormatError, match="ann.jgz: expected image.size"):
        annotation_hw({"image": {"size": [10]}}, "ann.jgz")
    assert annotation_hw({"image": {"size": [10, 20]}}, "ann.jgz") == (10, 20)


def test_float16_depth_decoding(tmp_path):
    values = np.array([[0.0, 1e-6, 2.5, -1.0], [np.nan, np.inf, 1000.0, 0.1]], np.float16)
    path = tmp_path / "depth.png"
    Image.fromarray(values.view(np.uint16)).save(path)
    depth = read_pytorch3d_depth(path, scale_adjustment=2.0, min_depth=1e-5)
    assert depth.dtype == np.float32
    expected = [[0.0, 0.0, 5.0, 0.0], [0.0, 0.0, 2000.0, float(np.float16(0.1)) * 2]]
    np.testing.assert_allclose(depth, expected, rtol=1e-7)
    with pytest.raises(ClipFormatError, match="depth.png: depth scale_adjustment"):
        read_pytorch3d_depth(path, scale_adjustment=float("nan"))
    with pytest.raises(ClipFormatError, match="missing.png: missing"):
        read_pytorch3d_depth(tmp_path / "missing.png")
