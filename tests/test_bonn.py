"""Bonn RGB-D Dynamic reader: a fixture in the real layout read back; the T_ROS / T_m pose correction (T_m's 3x3
block projected to SO(3)) against a hand computation; timestamp association; wrong-length groundtruth."""

from __future__ import annotations

import numpy as np
import pytest

import datamodules.bonn  # noqa: F401  (registers "bonn")
from datamodules import DATASETS
from datamodules.io import ClipFormatError
from tests.data.bonn.make_fixture import K_BONN, T_M_PAGE4D, T_ROS, write_fixture
from tests.data.sintel.make_fixture import PLANE_Z
from tests.test_sintel import unproject


@pytest.fixture(scope="module")
def bonn(tmp_path_factory):
    root = tmp_path_factory.mktemp("bonn")
    return root, write_fixture(root)


def _dataset(root, **kwargs):
    kwargs = {"num_frames": 3, "image_size": 56, "normalize": False, **kwargs}
    return DATASETS["bonn"](root, **kwargs)


def hand_extrinsics(row: np.ndarray) -> np.ndarray:
    """A groundtruth row -> camera-from-world, the correction written out with NumPy only."""
    qx, qy, qz, qw = row[4:8] / np.linalg.norm(row[4:8])
    T_gt = np.eye(4)
    T_gt[:3, :3] = [[1 - 2 * (qy * qy + qz * qz), 2 * (qx * qy - qz * qw), 2 * (qx * qz + qy * qw)],
                    [2 * (qx * qy + qz * qw), 1 - 2 * (qx * qx + qz * qz), 2 * (qy * qz - qx * qw)],
                    [2 * (qx * qz - qy * qw), 2 * (qy * qz + qx * qw), 1 - 2 * (qx * qx + qy * qy)]]
    T_gt[:3, 3] = row[1:4]
    U, _, Vt = np.linalg.svd(T_M_PAGE4D[:3, :3])
    T_m = T_M_PAGE4D.copy()
    T_m[:3, :3] = U @ Vt
    T_w_cam = np.linalg.inv(T_ROS) @ T_gt @ T_ROS @ T_m
    return np.linalg.inv(T_w_cam)[:3]


def test_corrected_poses_match_the_hand_computation_and_the_rendering_camera(bonn):
    root, truth = bonn
    ds = _dataset(root)
    assert ds.is_metric and ds.sequences == {"balloon2": 3, "crowd2": 3}  # names without rgbd_bonn_
    for seq, gt in truth.items():
        assert ds.frame_names(seq) == gt["rgb"]
        for k in range(3):
            frame = ds.load_frame(seq, k)
            row = gt["gt_rows"][gt["gt_row"][k]]  # the groundtruth row nearest in time
            np.testing.assert_allclose(frame.extrinsics, hand_extrinsics(row), atol=1e-9)
            np.testing.assert_allclose(frame.extrinsics, gt["extrinsics"][k], atol=1e-5)  # the true camera
            np.testing.assert_allclose(np.linalg.det(frame.extrinsics[:, :3]), 1.0, atol=1e-9)
            np.testing.assert_allclose(-frame.extrinsics[:, :3].T @ frame.extrinsics[:, 3], gt["centres"][k],
                                       atol=1e-5)
            np.testing.assert_allclose(frame.intrinsics, K_BONN)
            np.testing.assert_array_equal(frame.depth, gt["depth"][k])
            world = unproject(frame.depth, frame.intrinsics, frame.extrinsics)[frame.depth > 0]
            np.testing.assert_allclose(world[:, 2], PLANE_Z, atol=2e-3)


def test_uncorrected_rows_read_as_plain_tum_poses(bonn):
    root, truth = bonn
    frame = _dataset(root, pose_correction=False).load_frame("balloon2", 0)
    row = truth["balloon2"]["gt_rows"][0]
    np.testing.assert_allclose(-frame.extrinsics[:, :3].T @ frame.extrinsics[:, 3], row[1:4], atol=1e-9)
    with pytest.raises(AssertionError):  # not the rendering camera: the correction matters
        np.testing.assert_allclose(frame.extrinsics, truth["balloon2"]["extrinsics"][0], atol=1e-3)


def test_sample_points_land_on_the_plane(bonn):
    root, _ = bonn
    sample = _dataset(root, sequences=["crowd2"])[0]
    assert sample["seq_name"] == "crowd2" and sample["images"].shape == (3, 3, 42, 56)
    for i in range(3):
        depth = sample["depths"][i].double().numpy()
        world = unproject(depth, sample["intrinsics"][i].double().numpy(),
                          sample["extrinsics"][i].double().numpy())[depth > 0]
        np.testing.assert_allclose(world[:, 2], PLANE_Z, atol=0.1)


def test_missing_sequence_and_short_groundtruth_name_sequence_and_file(tmp_path):
    write_fixture(tmp_path, names=("person_tracking2",), num_frames=3)
    assert _dataset(tmp_path / "rgbd_bonn_dataset").sequences == {"person_tracking2": 3}  # root = the dataset folder
    with pytest.raises(ValueError, match="synchronous"):
        _dataset(tmp_path, sequences=["synchronous"])
    gt = tmp_path / "rgbd_bonn_dataset" / "rgbd_bonn_person_tracking2" / "groundtruth.txt"
    lines = gt.read_text().splitlines()
    gt.write_text("\n".join(lines[:5]) + "\n")  # 2 rows, 0.01 s: the later rgb frames have no pose
    with pytest.raises(ClipFormatError, match=r"rgbd_bonn_person_tracking2/groundtruth\.txt.*'person_tracking2'"):
        _dataset(tmp_path)
    # the official by-position pairing needs as many rows as images
    with pytest.raises(ClipFormatError, match=r"groundtruth\.txt.*'person_tracking2' has 2 entries for 3"):
        _dataset(tmp_path, association="row")


def test_official_stretch_to_518x518(bonn):
    root, truth = bonn
    sample = _dataset(root, sequences=["balloon2"], image_size=518, aspect_ratio=1.0, resize="stretch")[0]
    assert sample["images"].shape == (3, 3, 518, 518) and sample["depths"].shape == (3, 518, 518)
    sx, sy = 518 / 640, 518 / 480  # 640x480 -> 518x392 -> 518x518 composes to one anisotropic resize
    expected = K_BONN.copy()
    expected[0] = [K_BONN[0, 0] * sx, 0.0, (K_BONN[0, 2] + 0.5) * sx - 0.5]
    expected[1] = [0.0, K_BONN[1, 1] * sy, (K_BONN[1, 2] + 0.5) * sy - 0.5]
    np.testing.assert_allclose(sample["intrinsics"][0].double().numpy(), expected, rtol=1e-6, atol=1e-4)
    depth = sample["depths"][0].double().numpy()
    world = unproject(depth, sample["intrinsics"][0].double().numpy(),
                      sample["extrinsics"][0].double().numpy())[depth > 0]
    np.testing.assert_allclose(world[:, 2], PLANE_Z, atol=0.02)
