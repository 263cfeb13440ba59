"""`page4d eval` (what `make eval` runs) end to end on fixture roots in the real Sintel and TUM layouts, with a
checkpoint from `page4d fit`: every protocol of a benchmark with a root runs, a benchmark without one is skipped
and said so, each writes its tables, and the summary puts ours beside the published rows."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from tests.data.sintel.make_fixture import write_fixture as write_sintel
from tests.data.tum.make_fixture import write_fixture as write_tum
from tests.page4d_process import ROOT, explain, run_page4d

SMALL = ["--config", str(ROOT / "experiments" / "synthetic_scratch.yaml"), "--data.init_args.image_size", "28",
         "--data.init_args.num_frames", "2", "--data.init_args.num_workers", "0", "--data.init_args.val.num_clips", "2",
         "--trainer.enable_progress_bar", "false"]
FAST = ["--data.init_args.image_size", "56", "--data.init_args.num_workers", "0", "--trainer.accelerator", "cpu",
        "--trainer.enable_progress_bar", "false"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A checkpoint of `page4d fit` and data/{sintel,tum} fixture roots, with frame lists of their sequences."""
    folder = tmp_path_factory.mktemp("eval")
    fit = run_page4d("fit", *SMALL, "--trainer.max_steps=1", cwd=folder)
    assert fit.returncode == 0, explain(fit)
    sintel = write_sintel(folder / "data" / "sintel", num_frames=4)
    (folder / "sintel.txt").write_text("".join(f"{seq} {name}\n" for seq, t in sintel.items() for name in t["names"]))
    write_tum(folder / "data" / "tum", num_frames=5)
    (folder / "tum.txt").write_text("rgbd_dataset_freiburg3_walking_xyz *\nrgbd_dataset_freiburg3_sitting_static *\n")
    return folder


def _eval(folder: Path, bench: str, protocol: str, test: dict) -> str:
    run = run_page4d("eval", "--ckpt", "checkpoints/synthetic_scratch/last.ckpt", "--data-root", "data",
                     "--bench", bench,
                     "--protocol", protocol, "--configs", str(ROOT / "experiments" / "eval"),
                     *FAST, "--data.init_args.test", json.dumps(test), cwd=folder, timeout=600)
    assert run.returncode == 0, explain(run)
    return run.stdout


def test_official_sintel_protocols_write_every_table(workspace: Path) -> None:
    out = _eval(workspace, "sintel", "official",
                {"frame_list": str(workspace / "sintel.txt"), "resize": "stretch", "aspect_ratio": 1.0})
    results = workspace / "results" / "synthetic_scratch_last"
    for task in ("video_depth", "mono_depth", "pose"):
        name = f"sintel_{task}_official"
        assert f"== {name}" in out
        payload = json.loads((results / f"{name}.json").read_text())
        assert [r["sequence"] for r in payload["sequences"]] == ["alley_2", "market_5"]
        assert all(r["frames"] == 4 for r in payload["sequences"])
        assert payload["protocol"]["autocast"] == "bfloat16" and payload["meta"]["checkpoint"].endswith("last.ckpt")
        key = "ate" if task == "pose" else "abs_rel"
        assert math.isfinite(payload["summary"][key]) or payload["summary"]["skipped"]
        rows = list(csv.DictReader((results / f"{name}.csv").open()))
        assert rows[-1]["sequence"] == "MEAN"
    depth = json.loads((results / "sintel_video_depth_official.json").read_text())
    assert "abs_rel_dynamic" in depth["sequences"][0]  # alley_2 has the MonST3R masks in the fixture
    summary = (results / "summary.md").read_text()
    assert "Video depth" in summary and "**ours**" in summary
    assert "PAGE-4D, Table 5 (ablation)" in summary  # the published rows of the same benchmark and protocol


def test_a_benchmark_without_root_is_skipped_and_tum_pose_runs(workspace: Path) -> None:
    out = _eval(workspace, "tum,bonn", "standard", {"frame_list": str(workspace / "tum.txt")})
    assert "skip bonn_video_depth_standard: no data root" in out
    payload = json.loads((workspace / "results" / "synthetic_scratch_last" / "tum_pose_standard.json").read_text())
    assert sorted(r["sequence"] for r in payload["sequences"]) == ["rgbd_dataset_freiburg3_sitting_static",
                                                                   "rgbd_dataset_freiburg3_walking_xyz"]
    assert payload["protocol"]["protocol"] == "standard" and payload["protocol"]["autocast"] is None


def test_no_root_at_all_is_an_error(tmp_path: Path) -> None:
    ckpt = tmp_path / "x.ckpt"
    ckpt.write_bytes(b"")
    run = run_page4d("eval", "--weights", str(ckpt), "--bench", "sintel", "--configs",
                     str(ROOT / "experiments" / "eval"), cwd=tmp_path)
    assert run.returncode == 2 and "no benchmark root found" in run.stderr, explain(run)
