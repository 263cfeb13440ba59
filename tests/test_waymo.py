"""Waymo reader (DUSt3R/CUT3R preprocessed layout): sparse EXR LiDAR depth, c2w npz cameras, read back."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

import datamodules.waymo  # noqa: F401  (registers "waymo")
from datamodules import DATASETS
from datamodules.base import Page4DDataModule
from datamodules.io import ClipFormatError
from tests.data.waymo.make_fixture import SEGMENTS, write_exr, write_fixture, write_invalid_files

# Output geometry of a 64x96 source at image_size=56 (source aspect kept): H = round(56*64/96/14)*14 = 42;
# resize by max(42/64, 56/96) = 0.65625 -> 42x63, centre crop columns 3..58.
S, X0, Y0, OUT_HW = 0.65625, 3, 0, (42, 56)
SEG_A, SEG_B = list(SEGMENTS)
SEQ = f"{SEG_A}_cam1"


def expected_pixels(uv: np.ndarray) -> np.ndarray:
    """Native pixels (OpenCV centres) -> output pixels: u' = s (u + 0.5) - 0.5 - x0, same for v."""
    return np.stack([S * (uv[..., 0] + 0.5) - 0.5 - X0, S * (uv[..., 1] + 0.5) - 0.5 - Y0], axis=-1)


@pytest.fixture(scope="module")
def waymo(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("waymo")
    return root, write_fixture(root)


@pytest.fixture()
def small(tmp_path) -> tuple[Path, dict]:
    """A fresh fixture to corrupt (4 frames per sequence)."""
    return tmp_path, write_fixture(tmp_path, num_frames=4)


def _dataset(root: Path, **kwargs):
    kwargs = {"num_frames": 6, "image_size": 56, "normalize": False, **kwargs}
    return DATASETS["waymo"](root, **kwargs)


def test_sequences_are_segment_and_camera(waymo):
    root, gt = waymo
    ds = _dataset(root)
    assert ds.sparse_depth and ds.is_metric
    assert ds.sequences == {name: 6 for name in gt}
    assert list(_dataset(root, cameras=[2]).sequences) == [f"{SEG_A}_cam2"]
    with pytest.raises(ValueError, match="cameras"):
        _dataset(root, cameras=[6])


def test_native_depth_is_the_sparse_lidar_z_in_metres(waymo):
    root, gt = waymo
    ds = _dataset(root)
    for seq, g in gt.items():
        for i in range(6):
            frame = ds.load_frame(seq, i)
            np.testing.assert_array_equal(frame.depth, g["depth"][i])
            assert (frame.depth > 0).sum() == len(g["z"][i]) > 50
            np.testing.assert_allclose(frame.extrinsics, np.linalg.inv(g["cam2world"][i])[:3], atol=1e-9)


def test_cameras_and_resplatted_depth_after_resize_and_crop(waymo):
    root, gt = waymo
    ds = _dataset(root)
    for k, (seq, g) in enumerate(gt.items()):
        sample = ds[k]
        assert sample["seq_name"] == seq and sample["images"].shape == (6, 3, *OUT_HW)
        assert "dynamic_masks" not in sample and "tracks" not in sample
        E, K = sample["extrinsics"].double().numpy(), sample["intrinsics"].double().numpy()
        depths = sample["depths"].numpy()
        for i in range(6):
            cam = g["points"][i] @ E[i, :, :3].T + E[i, :, 3]
            uv = cam[:, :2] / cam[:, 2:] @ K[i, :2, :2].T + K[i, :2, 2]
            np.testing.assert_allclose(uv, expected_pixels(g["pixels"][i]), atol=1e-3)
            np.testing.assert_allclose(cam[:, 2], g["z"][i], rtol=1e-5)
            fx, fy, cx, cy = g["intrinsics"][i][[0, 1, 0, 1], [0, 1, 2, 2]]
            want = [[fx * S, 0, S * (cx + 0.5) - 0.5 - X0], [0, fy * S, S * (cy + 0.5) - 0.5 - Y0], [0, 0, 1]]
            np.testing.assert_allclose(K[i], want, atol=1e-4)
            # re-splatting: each return moves from its (rounded) native pixel to the rounded output pixel
            col, row = np.rint(expected_pixels(np.rint(g["pixels"][i]))).astype(int).T
            inside = (col >= 0) & (col < OUT_HW[1]) & (row >= 0) & (row < OUT_HW[0])
            want_depth = np.zeros(OUT_HW, np.float32)
            want_depth[row[inside], col[inside]] = g["z"][i][inside]
            np.testing.assert_array_equal(depths[i], want_depth)


def test_normalized_clip_starts_at_identity(waymo):
    root, _ = waymo
    sample = _dataset(root, normalize=True)[2]
    torch.testing.assert_close(sample["extrinsics"][0], torch.eye(3, 4), atol=1e-5, rtol=0)
    assert sample["extrinsics"][-1].sub(torch.eye(3, 4)).abs().amax() > 1e-2


def test_invalid_files_list_skips_frames(small):
    root, _ = small
    write_invalid_files(root, {SEG_A: ["1_00002", "2_00000"]})
    ds = _dataset(root, num_frames=3)
    assert ds.sequences[SEQ] == 3 and ds.sequences[f"{SEG_A}_cam2"] == 3 and ds.sequences[f"{SEG_B}_cam1"] == 4
    assert ds._frames[SEQ][2] == ["00000", "00001", "00003"]
    assert _dataset(root, num_frames=3, skip_invalid=False).sequences[SEQ] == 4
    (root / "invalid_files.h5").write_bytes(b"not hdf5")
    with pytest.raises(ClipFormatError, match="invalid_files.h5"):
        _dataset(root, num_frames=3)


def _unlink(path: Path) -> Path:
    path.unlink()
    return path


def _truncated(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return path


def _resave_npz(path: Path, **changes) -> Path:
    with np.load(path) as data:
        arrays = {**dict(data), **changes}
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def _nan_pose(path: Path) -> Path:
    with np.load(path) as data:
        cam2world = data["cam2world"].copy()
    cam2world[0, 3] = np.nan
    return _resave_npz(path, cam2world=cam2world)


def _small_depth(path: Path) -> Path:
    write_exr(path, np.ones((32, 48), np.float32))
    return path


CORRUPTIONS = {  # what to break in frame 00001 of camera 1 of the first segment
    "missing npz": lambda stem: _unlink(Path(f"{stem}.npz")),
    "missing exr": lambda stem: _unlink(Path(f"{stem}.exr")),
    "truncated exr": lambda stem: _truncated(Path(f"{stem}.exr")),
    "truncated jpg": lambda stem: _truncated(Path(f"{stem}.jpg")),
    "truncated npz": lambda stem: _truncated(Path(f"{stem}.npz")),
    "npz without cam2world": lambda stem: _resave_npz(Path(f"{stem}.npz"), cam2world=None),
    "NaN pose": lambda stem: _nan_pose(Path(f"{stem}.npz")),
    "depth of the wrong size": lambda stem: _small_depth(Path(f"{stem}.exr")),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_bad_files_raise_naming_the_file(small, kind):
    root, _ = small
    path = CORRUPTIONS[kind](root / SEG_A / "00001_1")
    ds = _dataset(root, num_frames=4)
    with pytest.raises(ClipFormatError) as err:
        ds[0]
    assert str(path) in str(err.value)
    assert any(str(path) in problem for problem in ds.validate())


def test_bad_clip_is_skipped_logged_and_counted(small, caplog):
    root, _ = small
    path = _truncated(root / SEG_A / "00002_1.exr")
    ds = _dataset(root, num_frames=4, skip_bad_clips=True)
    with caplog.at_level(logging.WARNING, logger="datamodules.sequence"):
        sample = ds[0]
    assert sample["seq_name"] == f"{SEG_A}_cam2" and ds.bad_clips == 1
    assert str(path) in caplog.text


def test_wrong_root_names_the_expected_layout(tmp_path):
    (tmp_path / "not_a_segment").mkdir()
    with pytest.raises(ClipFormatError, match="00000_1.jpg"):
        _dataset(tmp_path)


def test_one_batch_through_the_datamodule(waymo):
    root, _ = waymo
    dm = Page4DDataModule(dataset="waymo", root=str(root), num_frames=3, image_size=56, normalize=True,
                          batch_size=2, train={})
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].shape == (2, 3, 3, *OUT_HW) and batch["depths"].shape == (2, 3, *OUT_HW)
    assert batch["dataset"] == ["waymo", "waymo"] and batch["point_masks"].any()
    torch.testing.assert_close(batch["extrinsics"][:, 0], torch.eye(3, 4).expand(2, 3, 4), atol=1e-5, rtol=0)
