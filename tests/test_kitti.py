"""KITTI depth reader: annotated sparse GT + raw images + calibration + OXTS in the real layout read back; images
matched by name (GT starts at frame 5); sparse depth stays sparse through resizing; OXTS camera poses."""

from __future__ import annotations

import numpy as np
import pytest

import datamodules.kitti  # noqa: F401  (registers "kitti")
from datamodules import DATASETS
from datamodules.io import ClipFormatError
from tests.data.kitti.make_fixture import DATE, DRIVE, SPEED, TRAIN_DRIVE, WALL_X, write_fixture
from tests.test_sintel import unproject


@pytest.fixture(scope="module")
def kitti(tmp_path_factory):
    root = tmp_path_factory.mktemp("kitti")
    return root, write_fixture(root)


def _dataset(root, **kwargs):
    kwargs = {"num_frames": 4, "image_size": 56, "normalize": False, **kwargs}
    return DATASETS["kitti"](root, **kwargs)


def test_sparse_depth_intrinsics_and_oxts_poses(kitti):
    root, truth = kitti
    ds = _dataset(root)  # split "val" by default
    assert ds.is_metric and ds.sparse_depth and ds.has_poses and ds.sequences == {DRIVE: 4}
    gt = truth[DRIVE]
    assert ds.frame_names(DRIVE) == ["0000000005", "0000000006", "0000000007", "0000000008"]
    centres = []
    for i in range(4):
        frame = ds.load_frame(DRIVE, i)
        assert frame.source.endswith(f"{DATE}/{DRIVE}/image_02/data/{gt['names'][i]}.png")  # by name, not position
        np.testing.assert_allclose(frame.intrinsics, truth["K"], atol=1e-9)
        np.testing.assert_array_equal(frame.depth, gt["depth"][i].astype(np.float32))
        assert 0.2 < (frame.depth > 0).mean() < 0.4  # sparse, 0 = no return
        np.testing.assert_allclose(frame.extrinsics, gt["extrinsics"][i], atol=1e-6)
        np.testing.assert_allclose(np.linalg.det(frame.extrinsics[:, :3]), 1.0, atol=1e-9)
        world = unproject(frame.depth, frame.intrinsics, frame.extrinsics)[frame.depth > 0]
        np.testing.assert_allclose(world[:, 0], WALL_X, atol=0.01)  # the wall ahead, from every frame
        centres.append(-frame.extrinsics[:, :3].T @ frame.extrinsics[:, 3])
        optical_axis = frame.extrinsics[2, :3]
        assert optical_axis[0] > 0.99  # camera 2 looks forward (IMU x)
    steps = np.diff(np.stack(centres), axis=0)
    np.testing.assert_allclose(np.linalg.norm(steps, axis=1), SPEED, rtol=0.01)  # ~0.9 m per frame
    assert (steps @ [1.0, 0.0, 0.0] > 0.85).all()  # driving forward
    assert _dataset(root, split="train").sequences == {TRAIN_DRIVE: 4}


def test_sparse_depth_stays_sparse_after_resize(kitti):
    root, truth = kitti
    sample = _dataset(root, image_size=112)[0]  # a slight enlargement: interpolation would fill every hole
    assert sample["images"].shape == (4, 3, 28, 112)  # round(112 * 32 / 104 / 14) * 14
    source = truth[DRIVE]["depth"]
    for i in range(4):
        depth = sample["depths"][i].numpy()
        values = depth[depth > 0]
        assert 0 < values.size <= (source[i] > 0).sum() and 0.15 < (depth > 0).mean() < 0.35
        assert np.isin(values, source[i].astype(np.float32)).all()  # returns moved, never interpolated
        E, K = sample["extrinsics"][i].double().numpy(), sample["intrinsics"][i].double().numpy()
        world = unproject(depth.astype(np.float64), K, E)[depth > 0]
        np.testing.assert_allclose(world[:, 0], WALL_X, atol=0.3)  # re-splatted at the rounded pixel
    assert "abandon_pose" not in sample


def test_without_poses_identity_and_flag(kitti):
    root, _ = kitti
    ds = _dataset(root, poses="none")
    assert not ds.has_poses and DATASETS["kitti"].has_poses
    np.testing.assert_array_equal(ds.load_frame(DRIVE, 2).extrinsics, np.eye(3, 4))
    assert bool(ds[0]["abandon_pose"])


def test_missing_drive_and_missing_files_name_drive_and_file(tmp_path):
    write_fixture(tmp_path)
    with pytest.raises(ValueError, match="2011_09_26_drive_0005_sync"):
        _dataset(tmp_path, sequences=["2011_09_26_drive_0005_sync"])
    (tmp_path / DATE / DRIVE / "oxts" / "data" / "0000000007.txt").unlink()
    with pytest.raises(ClipFormatError, match=rf"oxts/data/0000000007\.txt.*'{DRIVE}'"):
        _dataset(tmp_path)
    assert _dataset(tmp_path, poses="none").sequences == {DRIVE: 4}
    (tmp_path / DATE / DRIVE / "image_02" / "data" / "0000000006.png").unlink()
    with pytest.raises(ClipFormatError, match=rf"image_02/data.*'{DRIVE}'.*0000000006\.png"):
        _dataset(tmp_path, poses="none")
    (tmp_path / DATE / "calib_cam_to_cam.txt").write_text("calib_time: x\nP_rect_02: 1 2 3\n")
    with pytest.raises(ClipFormatError, match=r"calib_cam_to_cam\.txt.*P_rect_02"):
        _dataset(tmp_path, split="train", poses="none")
