"""TUM RGB-D reader: a freiburg3 fixture in the real layout (rgb.txt / depth.txt / groundtruth.txt, uint16 depth)
read back; the 0.02 s association; the pose decoding of real fr1/xyz groundtruth lines."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import datamodules.tum  # noqa: F401  (registers "tum")
from datamodules import DATASETS
from datamodules.io import ClipFormatError
from datamodules.tum import read_trajectory, tum_extrinsics
from tests.data.sintel.make_fixture import PLANE_Z
from tests.data.tum.make_fixture import FR3, GAP_FRAME, NO_DEPTH_FRAME, write_fixture
from tests.test_sintel import unproject

REAL_GT = Path(__file__).parent / "data" / "tum" / "freiburg1_xyz-groundtruth_excerpt.txt"
SEQ = "rgbd_dataset_freiburg3_walking_xyz"


@pytest.fixture(scope="module")
def tum(tmp_path_factory):
    root = tmp_path_factory.mktemp("tum")
    return root, write_fixture(root)


def _dataset(root, **kwargs):
    kwargs = {"num_frames": 4, "image_size": 56, "normalize": False, **kwargs}
    return DATASETS["tum"](root, **kwargs)


def test_association_drops_unposed_frames_and_pairs_nearest(tum):
    root, truth = tum
    ds = _dataset(root)
    assert ds.is_metric and set(ds.sequences) == {SEQ, "rgbd_dataset_freiburg3_sitting_static"}
    gt = truth[SEQ]
    kept = [k for k in range(5) if k != GAP_FRAME]  # frame GAP_FRAME has no pose within 0.02 s
    assert ds.sequences[SEQ] == 4
    assert ds.frame_names(SEQ) == [gt["rgb"][k] for k in kept]
    for position, k in enumerate(kept):
        frame = ds.load_frame(SEQ, position)
        # the pose of the groundtruth row nearest in time (rows every 0.01 s, each a different camera)
        np.testing.assert_allclose(frame.extrinsics, gt["extrinsics"][k], atol=1e-6)
        np.testing.assert_allclose(frame.intrinsics, FR3)
        if k == NO_DEPTH_FRAME:
            assert frame.depth is None  # its depth frame was dropped: nothing within 0.02 s
            continue
        np.testing.assert_array_equal(frame.depth, gt["depth"][k])  # uint16 / 5000, the depth 5 ms later
        world = unproject(frame.depth, frame.intrinsics, frame.extrinsics)[frame.depth > 0]
        assert world.shape[0] > 0.9 * frame.depth.size
        np.testing.assert_allclose(world[:, 2], PLANE_Z, atol=2e-3)  # same static plane from every frame


def test_clip_with_a_frame_without_depth_marks_it_invalid(tum):
    root, _ = tum
    sample = _dataset(root, sequences=[SEQ])[0]
    assert sample["seq_name"] == SEQ and sample["images"].shape == (4, 3, 42, 56)
    valid = sample["point_masks"].flatten(1).any(1).tolist()
    assert valid == [True, False, True, True]  # position 1 = NO_DEPTH_FRAME


def test_real_groundtruth_lines_decode_as_camera_to_world_xyzw():
    stamps, poses = read_trajectory(REAL_GT)
    assert len(stamps) == 307 and stamps[0] == pytest.approx(1305031100.9659)
    E = tum_extrinsics(poses[0])
    qx, qy, qz, qw = poses[0, 3:] / np.linalg.norm(poses[0, 3:])
    R_c2w = np.array([  # the scalar-last quaternion written out by hand
        [1 - 2 * (qy * qy + qz * qz), 2 * (qx * qy - qz * qw), 2 * (qx * qz + qy * qw)],
        [2 * (qx * qy + qz * qw), 1 - 2 * (qx * qx + qz * qz), 2 * (qy * qz - qx * qw)],
        [2 * (qx * qz - qy * qw), 2 * (qy * qz + qx * qw), 1 - 2 * (qx * qx + qy * qy)]])
    np.testing.assert_allclose(E[:, :3], R_c2w.T, atol=1e-12)
    np.testing.assert_allclose(-E[:, :3].T @ E[:, 3], [1.3458, 0.6194, 1.6649], atol=1e-12)  # camera centre
    assert np.linalg.det(E[:, :3]) == pytest.approx(1.0)
    # fr1/xyz moves a few cm between consecutive rows (100 Hz): centres, not translations of w2c
    centres = np.stack([-tum_extrinsics(p)[:, :3].T @ tum_extrinsics(p)[:, 3] for p in poses[:10]])
    np.testing.assert_allclose(centres, poses[:10, :3], atol=1e-12)


def test_missing_sequence_and_bad_files_name_sequence_and_file(tmp_path):
    write_fixture(tmp_path, names=("walking_xyz",), num_frames=3)
    with pytest.raises(ValueError, match="rgbd_dataset_freiburg3_walking_rpy"):
        _dataset(tmp_path, sequences=["rgbd_dataset_freiburg3_walking_rpy"])
    gt = tmp_path / SEQ / "groundtruth.txt"
    lines = gt.read_text().splitlines()
    gt.write_text("\n".join(lines[:3]) + "\n")  # header only: no pose for any frame
    with pytest.raises(ClipFormatError, match=rf"{SEQ}/groundtruth\.txt.*{SEQ}"):
        _dataset(tmp_path)
    gt.write_text("\n".join(lines[:4] + ["1341847980.75 1.0 2.0 3.0 0 0 0"]) + "\n")  # 7 numbers
    with pytest.raises(ClipFormatError, match=r"groundtruth\.txt, line 5"):
        _dataset(tmp_path)
    shutil.rmtree(tmp_path / SEQ)
    with pytest.raises(ClipFormatError, match="no TUM sequences"):
        _dataset(tmp_path)
