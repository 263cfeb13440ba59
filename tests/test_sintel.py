"""MPI Sintel reader: a fixture in the real layout (.dpt / .cam binaries, final + clean passes, MonST3R dynamic
masks) read back; the `resize: stretch` evaluation geometry on a Sintel-size (1024x436) frame."""

from __future__ import annotations

import numpy as np
import pytest

import datamodules.sintel  # registers "sintel"
from datamodules import DATASETS
from datamodules.io import ClipFormatError
from tests.data.sintel.make_fixture import PLANE_Z, write_fixture


@pytest.fixture(scope="module")
def sintel(tmp_path_factory):
    root = tmp_path_factory.mktemp("sintel")
    return root, write_fixture(root)


def _dataset(root, **kwargs):
    kwargs = {"num_frames": 4, "image_size": 28, "normalize": False, **kwargs}
    return DATASETS["sintel"](root, **kwargs)


def unproject(depth: np.ndarray, K: np.ndarray, E: np.ndarray) -> np.ndarray:
    """(h, w) z-depth at OpenCV pixel centres -> world points (h, w, 3) with camera-from-world E."""
    h, w = depth.shape
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    y = (v - K[1, 2]) / K[1, 1]
    x = (u - K[0, 2] - K[0, 1] * y) / K[0, 0]
    cam = np.stack([x, y, np.ones_like(x)], -1) * depth[..., None]
    return (cam - E[:, 3]) @ E[:, :3]  # R^T (X_cam - t)


def test_frames_read_back_exactly_and_land_on_the_plane(sintel):
    root, truth = sintel
    ds = _dataset(root)
    assert ds.is_metric and not ds.sparse_depth and ds.sequences == {"alley_2": 4, "market_5": 4}
    assert ds.frame_names("alley_2") == ["frame_0001", "frame_0002", "frame_0003", "frame_0004"]
    for seq, gt in truth.items():
        for i in range(4):
            frame = ds.load_frame(seq, i)
            assert frame.image.shape == (24, 40, 3) and frame.depth.dtype == np.float32
            np.testing.assert_array_equal(frame.depth, gt["depth"][i])
            np.testing.assert_allclose(frame.intrinsics, gt["intrinsics"][i], atol=1e-12)
            np.testing.assert_allclose(frame.extrinsics, gt["extrinsics"][i], atol=1e-9)
            R, t = frame.extrinsics[:, :3], frame.extrinsics[:, 3]
            np.testing.assert_allclose(-R.T @ t, gt["centres"][i], atol=1e-9)  # N is world-to-camera
            world = unproject(frame.depth, frame.intrinsics, frame.extrinsics)
            np.testing.assert_allclose(world[..., 2], PLANE_Z, atol=1e-4)  # same static plane from every frame


def test_sample_depth_unprojects_onto_the_plane_after_crop(sintel):
    root, _ = sintel
    sample = _dataset(root)[0]
    assert sample["seq_name"] == "alley_2" and sample["images"].shape == (4, 3, 14, 28)  # crop: round(28*24/40/14)
    for i in range(4):
        E, K = sample["extrinsics"][i].double().numpy(), sample["intrinsics"][i].double().numpy()
        depth = sample["depths"][i].double().numpy()
        world = unproject(depth, K, E)[depth > 0]
        assert world.shape[0] > 0.9 * depth.size
        # nearest-neighbour depth sits at a source pixel centre up to half a source pixel away: plane tilt ~1 cm
        np.testing.assert_allclose(world[:, 2], PLANE_Z, atol=0.05)
        pts = sample["world_points"][i].double().numpy()[depth > 0]
        np.testing.assert_allclose(pts, world, atol=1e-3)


def test_pass_name_and_dynamic_masks(sintel):
    root, truth = sintel
    final = _dataset(root).load_frame("alley_2", 0).image.astype(int)
    clean = _dataset(root, pass_name="clean").load_frame("alley_2", 0).image.astype(int)
    np.testing.assert_array_equal(clean, (final - 40).clip(0, 255))
    with pytest.raises(ValueError, match="pass_name"):
        _dataset(root, pass_name="albedo")
    ds = _dataset(root)
    masks = truth["alley_2"]["masks"]
    for i in range(3):
        np.testing.assert_array_equal(ds.load_frame("alley_2", i).dynamic_mask, masks[i])
    np.testing.assert_array_equal(ds.load_frame("alley_2", 3).dynamic_mask, masks[2])  # last: previous frame's
    assert ds.load_frame("market_5", 0).dynamic_mask is None  # no dynamic_label_perfect/market_5
    assert "dynamic_masks" in ds[0] and "dynamic_masks" not in ds[1]
    assert ds[0]["dynamic_masks"].dtype.is_floating_point is False


def test_missing_sequence_and_bad_ground_truth_name_sequence_and_file(tmp_path):
    write_fixture(tmp_path, sequences=("alley_2", "cave_4"), num_frames=3)
    with pytest.raises(ValueError, match="temple_3"):
        _dataset(tmp_path, sequences=["temple_3"], num_frames=3)
    # a .dpt whose header size does not match its data
    dpt = tmp_path / "training" / "depth" / "cave_4" / "frame_0002.dpt"
    data = bytearray(dpt.read_bytes())
    data[4:8] = np.array([41], "<i4").tobytes()
    dpt.write_bytes(bytes(data))
    ds = _dataset(tmp_path, num_frames=3)
    with pytest.raises(ClipFormatError, match=r"cave_4/frame_0002\.dpt.*41x24"):
        ds.load_frame("cave_4", 1)
    # fewer cameras than frames: an error naming the sequence and the folder
    (tmp_path / "training" / "camdata_left" / "alley_2" / "frame_0003.cam").unlink()
    with pytest.raises(ClipFormatError, match=r"camdata_left/alley_2.*'alley_2'.*frame_0003\.cam"):
        _dataset(tmp_path, num_frames=3)
    # a .cam written as float32
    cam = tmp_path / "training" / "camdata_left" / "cave_4" / "frame_0001.cam"
    cam.write_bytes(cam.read_bytes()[:4 + 4 * 21])
    with pytest.raises(ClipFormatError, match=r"cave_4/frame_0001\.cam"):
        datamodules.sintel.read_cam(cam)


def test_stretch_gives_518x518_from_a_sintel_size_frame(tmp_path):
    truth = write_fixture(tmp_path, sequences=("ambush_4",), num_frames=2, hw=(436, 1024), masks=("ambush_4",))
    gt = truth["ambush_4"]
    ds = _dataset(tmp_path, num_frames=2, image_size=518, aspect_ratio=1.0, resize="stretch")
    sample = ds[0]
    assert sample["images"].shape == (2, 3, 518, 518) and sample["depths"].shape == (2, 518, 518)
    assert sample["dynamic_masks"].shape == (2, 518, 518)
    sx, sy = 518 / 1024, 518 / 436
    for i in range(2):
        K = gt["intrinsics"][i]
        expected = K.copy()
        expected[0] = [K[0, 0] * sx, 0.0, (K[0, 2] + 0.5) * sx - 0.5]
        expected[1] = [0.0, K[1, 1] * sy, (K[1, 2] + 0.5) * sy - 0.5]
        np.testing.assert_allclose(sample["intrinsics"][i].double().numpy(), expected, rtol=1e-6, atol=1e-4)
        # depth: exact nearest source pixel of each output pixel centre
        # (a centre landing exactly on a source pixel edge, e.g. output row 129 -> 109.0, may go either way)
        got = sample["depths"][i].numpy()
        picks = []
        for eps in (-1e-6, 1e-6):
            rows = np.clip(np.floor((np.arange(518) + 0.5) / sy + eps), 0, 435).astype(int)
            cols = np.clip(np.floor((np.arange(518) + 0.5) / sx + eps), 0, 1023).astype(int)
            picks.append(gt["depth"][i][np.ix_(rows, cols)])
        assert ((got == picks[0]) | (got == picks[1])).all()
        assert (got == picks[0]).mean() > 0.99
    # crop keeps today's size rule: width 518, H = round(518 * 436 / 1024 / 14) * 14 = 224, isotropic scale
    crop = _dataset(tmp_path, num_frames=2, image_size=518)[0]
    assert crop["images"].shape == (2, 3, 224, 518)
    K0, Kc = gt["intrinsics"][0], crop["intrinsics"][0].double().numpy()
    np.testing.assert_allclose(Kc[0, 0] / K0[0, 0], Kc[1, 1] / K0[1, 1], rtol=2e-3)  # up to one pixel rounding
    np.testing.assert_allclose(Kc[1, 1] / K0[1, 1], 224 / 436, rtol=1e-6)
    with pytest.raises(ValueError, match="resize"):
        _dataset(tmp_path, num_frames=2, resize="pad")
