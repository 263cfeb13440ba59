"""export.py + datamodules/video.py: every output of a predicted video reopens with an independent reader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.video import VideoDataset, read_frames
from page4d_lightning.export import export_video, frame_name
from page4d_lightning.geometry import se3_inverse
from page4d_lightning.inference import predict_sequence
from page4d_lightning.models import PAGE4D, PAGE4DConfig

SOURCE_HW = (40, 60)  # h, w of the written frames: a 56-wide network input of height 42 (centre crop)


def write_png_frames(folder: Path, count: int = 6, hw: tuple[int, int] = SOURCE_HW, first: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        base = np.zeros((*hw, 3), np.uint8)
        base[..., 0] = np.linspace(0, 255, hw[1])[None]
        base[..., 1] = (i * 30) % 256
        base[5:15, 5 + 4 * i: 15 + 4 * i] = 255  # a moving square
        base = np.clip(base.astype(int) + rng.integers(0, 20, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(base).save(folder / f"img_{first + i:04d}.png")
    return folder


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    frames = write_png_frames(root / "clip")
    item = VideoDataset(str(frames), image_size=56, query_grid=2, stride=1)[0]
    torch.manual_seed(0)
    model = PAGE4D(PAGE4DConfig.tiny(enable_track=True))
    prediction = predict_sequence(model, item["images"], window=4, overlap=2, query_points=item["query_points"])
    manifest = export_video(root / "out", prediction, item, timings={"model_s": 0.0})
    return Path(manifest["folder"]), prediction, item, manifest


def test_video_item_records_the_plan(exported):
    _, _, item, _ = exported
    assert item["images"].shape == (6, 3, 42, 56)
    assert item["frame_indices"].tolist() == list(range(6))
    plan = item["resize_crop"]
    assert tuple(plan["source_hw"]) == SOURCE_HW and tuple(plan["out_hw"]) == (42, 56)


def test_depth_png_times_scale_is_the_npy_depth(exported):
    folder, prediction, _, _ = exported
    for f in range(6):
        depth = np.load(folder / "depth" / f"{frame_name(f)}.npy")
        assert depth.shape == SOURCE_HW
        with Image.open(folder / "depth" / f"{frame_name(f)}.png") as png:
            scale = float(png.text["depth_scale"])
            assert png.text["frame_index"] == str(f)
            values = np.asarray(png, dtype=np.float64) * scale
        np.testing.assert_allclose(values, depth, atol=scale / 2 + 1e-9)
        inside = depth > 0  # the network crop covers every input row but a few: its depth is the prediction's
        assert inside.mean() > 0.8
        assert np.isclose(np.median(depth[inside]), float(prediction["depth"][f].median()), rtol=0.2)
    assert (folder / "confidence" / "frame_000000.png").is_file()
    with Image.open(folder / "dynamic_mask" / "frame_000003.png") as m:
        assert m.size == SOURCE_HW[::-1]
    with Image.open(folder / "dynamic_mask_patch" / "frame_000003.png") as m:
        assert m.size == (4, 3)


def test_ply_point_count(exported):
    from plyfile import PlyData

    folder, _, _, manifest = exported
    ply = PlyData.read(str(folder / "points.ply"))
    vertex = ply["vertex"]
    counts = manifest["settings"]["points"]
    assert vertex.count == counts["static"] + counts["dynamic"] > 0
    assert {"x", "y", "z", "red", "green", "blue", "frame", "dynamic"} <= {p.name for p in vertex.properties}


def test_evo_reads_the_tum_trajectory_back(exported):
    from evo.tools import file_interface

    folder, prediction, item, _ = exported
    trajectory = file_interface.read_tum_trajectory_file(str(folder / "trajectory_tum.txt"))
    np.testing.assert_allclose(trajectory.timestamps, item["timestamps"].numpy(), atol=1e-6)
    extrinsics = se3_inverse(torch.from_numpy(np.stack(trajectory.poses_se3))).numpy()[:, :3]
    np.testing.assert_allclose(extrinsics, prediction["extrinsics"].numpy(), atol=1e-5)
    cameras = json.loads((folder / "cameras.json").read_text())
    np.testing.assert_allclose(np.array([f["extrinsics"] for f in cameras["frames"]]),
                               prediction["extrinsics"].numpy(), atol=1e-6)


def test_pycolmap_reads_the_model_back(exported):
    import pycolmap

    folder, prediction, _, _ = exported
    cameras = json.loads((folder / "cameras.json").read_text())
    model = pycolmap.Reconstruction(str(folder / "colmap" / "sparse" / "0"))
    assert model.num_images() == 6 and model.num_cameras() == 6
    for image in model.images.values():
        frame = int(image.name.split("_")[1].split(".")[0])
        camera = model.cameras[image.camera_id]
        K = np.array(cameras["frames"][frame]["intrinsics"])
        assert (camera.height, camera.width) == SOURCE_HW
        with Image.open(folder / "colmap" / "images" / image.name) as picture:  # the workspace's images/ folder
            assert picture.size == (camera.width, camera.height)
        np.testing.assert_allclose(camera.params, [K[0, 0], K[1, 1], K[0, 2], K[1, 2]], atol=1e-5)
        np.testing.assert_allclose(image.cam_from_world().matrix(), prediction["extrinsics"][frame].numpy(),
                                   atol=1e-5)
    assert model.num_points3D() > 0


def test_rerun_recording_opens(exported):
    from rerun.chunk import RrdReader

    folder, _, _, _ = exported
    reader = RrdReader(str(folder / "recording.rrd"))
    assert len(reader.recordings()) == 1
    paths = {chunk.entity_path for chunk in reader.stream()}
    assert {"/world/camera", "/world/camera/image/rgb", "/world/camera/image/depth"} <= paths


def test_tracks_video_and_report(exported):
    import av

    folder, _, _, manifest = exported
    with av.open(str(folder / "tracks.mp4")) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 6 and decoded[0].shape[:2] == SOURCE_HW
    tracks = json.loads((folder / "tracks.json").read_text())
    assert len(tracks["frames"]) == 6 and len(tracks["frames"][0]["xy"]) == 4
    report = (folder / "report.html").read_text()
    assert "data:image/png;base64," in report and "http" not in report.split("<body>")[1].split("<h2>Files")[0]
    assert set(manifest["files"]) >= {"points.ply", "trajectory_tum.txt", "cameras.json", "recording.rrd"}
    assert all((folder / f).is_file() for f in manifest["files"])


def test_nothing_is_overwritten(exported, tmp_path):
    folder, prediction, item, _ = exported
    again = export_video(folder.parent, prediction, item, rerun=False, colmap=False)
    assert Path(again["folder"]) != folder and Path(again["folder"]).name.endswith("_2")


def test_bad_inputs_name_the_path(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=f"{empty}: a folder without images"):
        read_frames(str(empty))
    bad_video = tmp_path / "broken.mp4"
    bad_video.write_bytes(b"not a video at all")
    with pytest.raises(ValueError, match=f"{bad_video}: cannot decode the video"):
        read_frames(str(bad_video))
    mixed = write_png_frames(tmp_path / "mixed", count=2)
    write_png_frames(mixed, count=1, hw=(30, 60), first=5)
    with pytest.raises(ValueError, match="expected frames of one size"):
        read_frames(str(mixed))
    with pytest.raises(ValueError, match="no such file or folder"):
        read_frames(str(tmp_path / "missing.mp4"))
    with pytest.raises(ValueError, match="the glob matches no image file"):
        read_frames(str(tmp_path / "mixed" / "img_9*.png"))
    import av

    no_frames = tmp_path / "no_frames.mp4"
    with av.open(str(no_frames), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        container.start_encoding()  # a header, no frame (FFmpeg then lists no video stream)
    with pytest.raises(ValueError, match=f"{no_frames}: (zero frames|no video stream)"):
        read_frames(str(no_frames))
