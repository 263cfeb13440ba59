"""Benchmark protocols with known answers: a perfect prediction scores AbsRel 0 and ATE 0, a scaled one scores 0
after alignment, the official world-z quirk scores exactly the world-z / depth-map discrepancy, aggregation
weights by valid pixels (depth) or not (pose), a static-camera sequence is skipped and named, and the tables
are written."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from datamodules import SyntheticDynamicDataset
from page4d_lightning.evaluation import EvalProtocol, aggregate, predicted_depth, score_sequence, write_results
from page4d_lightning.geometry import depth_to_world_points, relative_to_first
from page4d_lightning.metrics.functional import depth_errors


@pytest.fixture(scope="module")
def sample() -> dict:
    """A metric (not normalised) synthetic sequence: moving camera, moving objects, exact GT."""
    clip = SyntheticDynamicDataset(num_frames=5, image_size=56, normalize=False, num_clips=1, seed=3,
                                   frame_interval=0.5)[0]
    return {k: clip[k] for k in ("images", "depths", "extrinsics", "intrinsics", "dynamic_masks", "point_masks",
                                 "seq_name")}


def _perfect(sample: dict, scale: float = 1.0) -> dict:
    """The ground truth as a prediction, in a world scaled by `scale` (depth and translations)."""
    extrinsics = sample["extrinsics"].clone()
    extrinsics[:, :, 3] *= scale
    return {"extrinsics": extrinsics, "intrinsics": sample["intrinsics"].clone(), "depth": sample["depths"] * scale}


@pytest.mark.parametrize("task", ["video_depth", "mono_depth"])
@pytest.mark.parametrize("scale", [1.0, 3.7])
def test_a_perfect_depth_map_scores_zero_after_alignment(sample, task, scale) -> None:
    protocol = EvalProtocol(benchmark="bonn", task=task, depth_source="depth_map")
    row = score_sequence(_perfect(sample, scale), sample, protocol)
    assert row["abs_rel"] == pytest.approx(0.0, abs=1e-6) and row["delta_1_25"] == 1.0
    assert row["abs_rel_dynamic"] == pytest.approx(0.0, abs=1e-6) and row["valid_pixels"] > 0


def test_official_world_z_scores_the_world_z_discrepancy(sample) -> None:
    """The official video depth scores z in camera 0's frame against each frame's depth: a perfect prediction of a
    moving camera is not 0 there, but exactly the error of world z against the depth maps; a static camera is."""
    protocol = EvalProtocol(benchmark="sintel", task="video_depth", protocol="official", depth_source="world_z")
    moving = score_sequence(_perfect(sample), sample, protocol)
    in_camera_0 = relative_to_first(sample["extrinsics"])
    world, _ = depth_to_world_points(sample["depths"], in_camera_0, sample["intrinsics"])
    gt = sample["depths"] * sample["point_masks"]
    assert moving["abs_rel"] > 0.01  # the camera moves: world z differs from the per-frame depth
    expected = depth_errors(world[..., 2][None], gt[None], **protocol.depth_options())  # per sequence, scale, 70
    assert moving["abs_rel"] == pytest.approx(float(expected["abs_rel"][0]), rel=1e-9)
    assert moving["valid_pixels"] == int(((gt > 0) & (gt < 70)).sum())
    still = {**sample, "extrinsics": sample["extrinsics"][:1].expand(5, 3, 4).clone()}
    assert score_sequence(_perfect(still), still, protocol)["abs_rel"] == pytest.approx(0.0, abs=1e-6)
    assert torch.allclose(predicted_depth(_perfect(still), "world_z"), sample["depths"], atol=1e-5)


@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_a_perfect_trajectory_scores_ate_zero_after_sim3(sample, scale) -> None:
    row = score_sequence(_perfect(sample, scale), sample, EvalProtocol(benchmark="tum", task="pose"))
    assert row["ate"] == pytest.approx(0.0, abs=1e-6) and row["rpe_trans"] == pytest.approx(0.0, abs=1e-6)
    assert row["rpe_rot"] == pytest.approx(0.0, abs=1e-4)


def test_a_static_camera_is_skipped_and_named(sample) -> None:
    still = {**sample, "extrinsics": sample["extrinsics"][:1].expand(5, 3, 4).clone(), "seq_name": "tripod"}
    with pytest.warns(RuntimeWarning, match="static camera centres"):
        row = score_sequence(_perfect(still), still, EvalProtocol(benchmark="tum", task="pose"))
    assert "Sim(3)" in row["skipped"]
    summary = aggregate([row, {"sequence": "a", "frames": 5, "ate": 1.0, "rpe_trans": 2.0, "rpe_rot": 3.0},
                         {"sequence": "b", "frames": 5, "ate": 3.0, "rpe_trans": 2.0, "rpe_rot": 1.0}], "pose")
    assert summary["ate"] == 2.0 and summary["sequences"] == 2  # unweighted, the skipped one left out
    assert summary["skipped"] == [{"sequence": "tripod", "why": row["skipped"]}]


def test_depth_means_are_weighted_by_valid_pixels() -> None:
    rows = [{"sequence": "a", "frames": 2, "abs_rel": 0.1, "delta_1_25": 1.0, "valid_pixels": 300.0},
            {"sequence": "b", "frames": 2, "abs_rel": 0.5, "delta_1_25": 0.0, "valid_pixels": 100.0},
            {"sequence": "c", "frames": 2, "skipped": "no valid ground-truth depth pixel"}]
    summary = aggregate(rows, "video_depth")
    assert summary["abs_rel"] == pytest.approx(0.2) and summary["delta_1_25"] == pytest.approx(0.75)
    assert summary["frames"] == 4 and [s["sequence"] for s in summary["skipped"]] == ["c"]


def test_tables_hold_every_sequence_and_the_mean(tmp_path, sample) -> None:
    protocol = EvalProtocol(benchmark="bonn", task="video_depth", results_dir=str(tmp_path), run_name="run")
    rows = [score_sequence(_perfect(sample, 2.0), sample, protocol),
            {"sequence": "empty", "frames": 5, "skipped": "no valid ground-truth depth pixel"}]
    summary = aggregate(rows, protocol.task)
    paths = write_results(protocol, rows, summary, {"checkpoint": "x.ckpt", "settings": "s"})
    assert [p.name for p in paths] == ["bonn_video_depth_standard.json", "bonn_video_depth_standard.csv",
                                       "bonn_video_depth_standard.md"]
    payload = json.loads(paths[0].read_text())
    assert payload["summary"]["abs_rel"] == pytest.approx(0.0, abs=1e-6) and len(payload["sequences"]) == 2
    table = list(csv.DictReader(paths[1].open()))
    assert [r["sequence"] for r in table] == [sample["seq_name"], "empty", "MEAN"]
    markdown = paths[2].read_text()
    assert "abs_rel_dynamic" in markdown and "skipped: no valid ground-truth depth pixel" in markdown
    assert "mean weighted by valid pixels" in markdown


def test_bad_protocols_name_the_field() -> None:
    with pytest.raises(ValueError, match="evaluation.task"):
        EvalProtocol(benchmark="sintel", task="depth")
    with pytest.raises(ValueError, match="evaluation.benchmark"):
        EvalProtocol(benchmark="tum", task="video_depth")
    with pytest.raises(ValueError, match="evaluation.depth_source"):
        EvalProtocol(benchmark="sintel", task="video_depth", depth_source="z")
    assert math.isnan(aggregate([], "pose")["ate"])


# ------------------------------------------------------------------- known answers on each benchmark's real layout
def _reader_sample(name: str, root) -> dict:
    """The first sequence of a benchmark fixture, read by its registered reader as the protocols read it (every
    frame, metric ground truth), at 56 px."""
    from pathlib import Path

    from datamodules import get_dataset_class
    from tests.data.bonn.make_fixture import write_fixture as bonn
    from tests.data.dycheck.make_fixture import write_fixture as dycheck
    from tests.data.kitti.make_fixture import write_fixture as kitti
    from tests.data.sintel.make_fixture import write_fixture as sintel
    from tests.data.tum.make_fixture import write_fixture as tum

    writers = {"sintel": sintel, "bonn": bonn, "tum": tum, "dycheck": dycheck, "kitti": kitti}
    writers[name](Path(root))
    dataset = get_dataset_class(name)(root=str(root), image_size=56, normalize=False)
    frames = Path(root) / "frames.txt"
    frames.write_text(f"{next(iter(dataset.sequences))} *\n")
    return get_dataset_class(name)(root=str(root), image_size=56, normalize=False, frame_list=str(frames))[0]


@pytest.mark.parametrize("benchmark", ["sintel", "bonn", "tum", "dycheck", "kitti"])
def test_a_perfect_prediction_scores_zero_on_each_benchmark_layout(tmp_path, benchmark) -> None:
    """The reader's own ground truth as the prediction, scaled by 2.5: AbsRel 0 after the protocol's alignment
    (video and mono where the benchmark has depth presets) and ATE 0 after Sim(3) (where the camera moves)."""
    sample = _reader_sample(benchmark, tmp_path)
    prediction = _perfect(sample, 2.5)
    tasks = {"sintel": ("video_depth", "mono_depth"), "bonn": ("video_depth", "mono_depth"), "tum": (),
             "dycheck": ("video_depth", "mono_depth"), "kitti": ("video_depth", "mono_depth")}[benchmark]
    for task in tasks:
        row = score_sequence(prediction, sample, EvalProtocol(benchmark=benchmark, task=task))
        assert row["valid_pixels"] > 0 and row["abs_rel"] == pytest.approx(0.0, abs=1e-5), (task, row)
    row = score_sequence(prediction, sample, EvalProtocol(benchmark=benchmark, task="pose"))
    assert "skipped" not in row, row  # every fixture camera moves
    assert row["ate"] == pytest.approx(0.0, abs=1e-5) and row["rpe_rot"] < 1e-2, row
