"""DyCheck iPhone reader: real paper-windmill camera JSONs with synthetic RGBA frames and (H, W, 1) depth read back;
raw metric units (no scene scale / centre); the 3-unit far clip marked invalid; camera 0 only."""

from __future__ import annotations

import json

import numpy as np
import pytest

import datamodules.dycheck  # noqa: F401  (registers "dycheck")
from datamodules import DATASETS
from datamodules.io import ClipFormatError
from tests.data.dycheck.make_fixture import CLIPPED, PLANE_NORMAL, PLANE_POINT, ZEROED, write_fixture
from tests.test_sintel import unproject

NAMES = ["0_00000", "0_00040", "0_00080", "0_00120"]


@pytest.fixture(scope="module")
def dycheck(tmp_path_factory):
    root = tmp_path_factory.mktemp("dycheck")
    return root, write_fixture(root)


def _dataset(root, **kwargs):
    kwargs = {"num_frames": 4, "image_size": 56, "normalize": False, **kwargs}
    return DATASETS["dycheck"](root, **kwargs)


def test_real_cameras_raw_units_and_far_clip(dycheck):
    root, truth = dycheck
    ds = _dataset(root)
    assert ds.is_metric and ds.sequences == {"paper-windmill": 4} and ds.frame_names("paper-windmill") == NAMES
    for i in range(4):
        frame = ds.load_frame("paper-windmill", i)
        assert frame.image.shape == (960, 720, 3)  # RGBA -> RGB, portrait [W, H] = [720, 960]
        np.testing.assert_array_equal(frame.image, truth["rgb"][i])
        np.testing.assert_allclose(frame.intrinsics, truth["intrinsics"][i], atol=1e-9)
        np.testing.assert_allclose(frame.extrinsics, truth["extrinsics"][i], atol=1e-6)
        # raw JSON position, NOT (position - scene.center) * scene.scale
        np.testing.assert_allclose(-frame.extrinsics[:, :3].T @ frame.extrinsics[:, 3], truth["centres"][i],
                                   atol=1e-6)
        assert (frame.depth[CLIPPED] == 0).all() and (frame.depth[ZEROED] == 0).all()  # clipped 3.0: invalid
        stored = truth["depth"][i]
        keep = (stored > 0) & (stored < 3.0 - 1e-3)
        np.testing.assert_array_equal(frame.depth[keep], stored[keep])  # raw units, not multiplied by scale
        assert keep.mean() > 0.8 and (frame.depth[~keep] == 0).all()
        world = unproject(frame.depth, frame.intrinsics, frame.extrinsics)[keep]
        np.testing.assert_allclose((world - PLANE_POINT) @ PLANE_NORMAL, 0.0, atol=1e-5)  # one plane, all frames
    first = ds.load_frame("paper-windmill", 0)
    np.testing.assert_allclose(first.intrinsics[:2, 2], [358.8895263671875 - 0.5, 484.92236328125 - 0.5])
    kept = _dataset(root, depth_far=None).load_frame("paper-windmill", 0).depth
    assert (kept[CLIPPED] == 3.0).all()


def test_sample_geometry(dycheck):
    root, _ = dycheck
    sample = _dataset(root)[0]
    assert sample["seq_name"] == "paper-windmill" and sample["images"].shape == (4, 3, 56, 56)  # portrait: H <= W
    depth, E, K = (sample[k][1].double().numpy() for k in ("depths", "extrinsics", "intrinsics"))
    world = unproject(depth, K, E)[depth > 0]
    np.testing.assert_allclose((world - PLANE_POINT) @ PLANE_NORMAL, 0.0, atol=0.02)


def test_missing_scene_and_missing_files_name_scene_and_file(tmp_path):
    write_fixture(tmp_path)
    with pytest.raises(ValueError, match="apple"):
        _dataset(tmp_path, sequences=["apple"])
    scene = tmp_path / "paper-windmill"
    bad = np.zeros((960, 700, 1), np.float32)
    np.save(scene / "depth" / "1x" / "0_00040.npy", bad)
    with pytest.raises(ClipFormatError, match=r"depth/1x/0_00040\.npy"):
        _dataset(tmp_path).load_frame("paper-windmill", 1)
    camera = json.loads((scene / "camera" / "0_00080.json").read_text())
    del camera["orientation"]
    (scene / "camera" / "0_00080.json").write_text(json.dumps(camera))
    with pytest.raises(ClipFormatError, match=r"camera/0_00080\.json.*orientation"):
        _dataset(tmp_path).load_frame("paper-windmill", 2)
    (scene / "depth" / "1x" / "0_00120.npy").unlink()
    with pytest.raises(ClipFormatError, match=r"depth/1x.*'paper-windmill'.*0_00120\.npy"):
        _dataset(tmp_path)
