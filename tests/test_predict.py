"""`page4d predict --ckpt_path X --input VIDEO|FOLDER|GLOB --out DIR`, run as a user does (a `page4d` process)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from page4d_lightning.cli import expand_predict_shorthand
from tests.page4d_process import ROOT, explain, run_page4d
from tests.test_export import SOURCE_HW, write_png_frames

FIT = ["fit", "--config", str(ROOT / "experiments" / "synthetic_scratch.yaml"), "--data.init_args.image_size", "28",
       "--data.init_args.num_frames", "2", "--data.init_args.num_workers", "0", "--data.init_args.val.num_clips", "2",
       "--trainer.enable_progress_bar", "false", "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0",
       "--model.model_overrides", '{"enable_track": true}']
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.accelerator=cpu", "--image-size", "56"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fit")
    run = run_page4d(*FIT, cwd=folder)
    assert run.returncode == 0, explain(run)
    path = folder / "checkpoints" / "synthetic_scratch" / "last.ckpt"
    assert path.is_file()
    return path


def write_mp4(path: Path, frames: list[np.ndarray], fps: int = 10) -> Path:
    import av

    h, w = frames[0].shape[:2]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _folder_of(stdout: str) -> Path:
    line = next(x for x in stdout.splitlines() if x.startswith("page4d predict:"))
    return Path(line.split("-> ")[1].split("/  (")[0])


def test_shorthand_expands_to_the_lightningcli_form(checkpoint: Path) -> None:
    argv = expand_predict_shorthand(["predict", "--ckpt_path", str(checkpoint), "--input", "v.mp4", "--out=o",
                                     "--window", "8", "--query-grid", "3"])
    assert argv[:3] == ["predict", "--ckpt_path", str(checkpoint)]
    assert "--data.class_path" in argv and "datamodules.video.VideoDataModule" in argv
    assert {"--data.init_args.input=v.mp4", "--data.init_args.window=8", "--data.init_args.query_grid=3",
            "--trainer.callbacks.out=o"} <= set(argv)
    assert argv[argv.index("--model.preset") + 1] == "tiny"  # from the checkpoint's hyper-parameters
    weights = expand_predict_shorthand(["predict", "--model.weights", "model.pt", "--input", "x", "--out", "o"])
    assert weights[weights.index("--model.preset") + 1] == "vggt_1b"
    assert expand_predict_shorthand(["fit", "--input", "x"]) == ["fit", "--input", "x"]


def test_predict_png_folder_in_windows_with_tracks(checkpoint: Path, tmp_path: Path) -> None:
    frames = write_png_frames(tmp_path / "frames", count=6)
    run = run_page4d("predict", "--ckpt_path", str(checkpoint), "--input", str(frames), "--out", str(tmp_path / "out"),
                     "--window", "4", "--overlap", "2", "--query-grid", "2", *QUIET, cwd=tmp_path)
    assert run.returncode == 0, explain(run)
    folder = _folder_of(run.stdout)
    assert folder == tmp_path / "out" / "frames"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["settings"]["window"] == 4 and manifest["settings"]["frames"] == 6
    assert {"tracks.mp4", "points.ply", "report.html", "recording.rrd", "colmap/sparse/0/cameras.bin",
            "colmap/images/frame_000005.png"} <= set(manifest["files"])
    assert all((folder / f).is_file() for f in manifest["files"])
    depth = np.load(folder / "depth" / "frame_000005.npy")
    assert depth.shape == SOURCE_HW


def test_predict_mp4_with_stride(checkpoint: Path, tmp_path: Path) -> None:
    from PIL import Image

    frames = write_png_frames(tmp_path / "frames", count=6)
    rgb = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(frames.iterdir())]
    video = write_mp4(tmp_path / "clip.mp4", rgb)
    run = run_page4d("predict", "--ckpt_path", str(checkpoint), "--input", str(video), "--out", str(tmp_path / "out"),
                     "--stride", "2", *QUIET, cwd=tmp_path)
    assert run.returncode == 0, explain(run)
    folder = _folder_of(run.stdout)
    cameras = json.loads((folder / "cameras.json").read_text())
    assert [f["frame_index"] for f in cameras["frames"]] == [0, 2, 4]  # original frame numbers
    assert sorted(p.name for p in (folder / "depth").glob("*.png")) == [f"frame_00000{i}.png" for i in (0, 2, 4)]
    assert cameras["source_hw"] == list(SOURCE_HW)


def test_predict_names_a_bad_input(checkpoint: Path, tmp_path: Path) -> None:
    empty = tmp_path / "no_images"
    empty.mkdir()
    run = run_page4d("predict", "--ckpt_path", str(checkpoint), "--input", str(empty), "--out", str(tmp_path / "o"),
                     *QUIET, cwd=tmp_path)
    assert run.returncode != 0
    assert f"{empty}: a folder without images" in run.stderr
