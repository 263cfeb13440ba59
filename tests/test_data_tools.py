"""`page4d data validate | inspect` through the real CLI entry point: every problem of a broken root in one run,
exit codes, and inspection sheets of the expected size and content."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import datamodules.custom  # noqa: F401  (registers "custom")
from datamodules import DATASETS
from page4d_lightning.cli import main
from page4d_lightning.tools.data import LABEL_H, TOP_MIN, clip_sheet
from tests.data.custom.make_fixture import HOLE, write_fixture
from tests.page4d_process import experiment_copy

ROOT = Path(__file__).resolve().parents[1]


def _validate(root: Path, *extra: str) -> int:
    return main(["data", "validate", "--dataset", "custom", "--root", str(root), *extra])


def test_validate_clean_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_fixture(tmp_path)
    assert _validate(tmp_path) == 0
    out = capsys.readouterr().out
    assert "OK, 13 frames, no problem" in out and "PROBLEM" not in out


def test_validate_reports_every_problem_in_one_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_fixture(tmp_path)
    (tmp_path / "walk/depth/000002.png").unlink()
    image = tmp_path / "walk/images/000004.png"
    image.write_bytes(image.read_bytes()[:80])
    cameras = json.loads((tmp_path / "orbit/cameras.json").read_text())
    cameras["frames"][3]["extrinsics"][1][1] = float("nan")
    (tmp_path / "orbit/cameras.json").write_text(json.dumps(cameras))
    assert _validate(tmp_path) == 1
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("PROBLEM")]
    assert len(lines) == 3
    assert any("walk/depth/000002.png: missing depth file" in line for line in lines)
    assert any("walk/images/000004.png: unreadable RGB image" in line for line in lines)
    assert any("orbit/cameras.json: frame 3: extrinsics holds NaN/inf" in line for line in lines)


def test_validate_file_level_problem_is_reported_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_fixture(tmp_path)
    (tmp_path / "walk/cameras.json").write_text('{"frames": [')
    assert _validate(tmp_path, "--option", "sequences=[walk]") == 1
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("PROBLEM")]
    assert len(lines) == 1 and "walk/cameras.json: unreadable JSON" in lines[0] and "(x6 frames)" in lines[0]


def test_validate_reports_a_misspelled_camera_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`depth_scle: 5000` would give depths 5x wrong if ignored: validate names the key and the file."""
    write_fixture(tmp_path)
    cameras = json.loads((tmp_path / "walk/cameras.json").read_text())
    cameras["depth_scle"] = 5000
    (tmp_path / "walk/cameras.json").write_text(json.dumps(cameras))
    assert _validate(tmp_path) == 1
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("PROBLEM")]
    assert len(lines) == 1 and "walk/cameras.json: unknown key(s) ['depth_scle']" in lines[0]


def test_validate_layout_failure_and_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_fixture(tmp_path)
    (tmp_path / "orbit/cameras.json").unlink()
    assert _validate(tmp_path) == 1
    assert "orbit/cameras.json: missing camera file" in capsys.readouterr().out
    assert main(["data", "validate", "--dataset", "nope", "--root", str(tmp_path)]) == 2
    assert "unknown dataset 'nope'" in capsys.readouterr().err
    assert main(["data", "validate", "--root", str(tmp_path)]) == 2  # --dataset is required
    assert _validate(tmp_path, "--option", "bogus=1") == 2
    assert main(["data"]) == 2
    assert main(["data", "--help"]) == 0
    assert "validate" in capsys.readouterr().out


def test_validate_procedural_dataset_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "validate", "--dataset", "synthetic"]) == 0
    assert "no files to validate" in capsys.readouterr().out


def test_inspect_synthetic_experiment(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = experiment_copy("synthetic_scratch", tmp_path, {"num_clips: 16": "num_clips: 2"})
    args = ["--split", "val", "--num-clips", "4", "--out", str(tmp_path / "out")]
    small = ["--data.init_args.image_size", "56", "--data.init_args.num_frames", "2"]
    assert main(["data", "inspect", "--config", str(config), *args, *small]) == 0
    written = sorted((tmp_path / "out").glob("*.png"))
    assert [p.name for p in written] == [f"synthetic_synthetic_val_1_00000{k}_{k}.png" for k in (0, 1)]
    assert f"wrote {written[0]}" in capsys.readouterr().out
    # 2 frames x 56 px, columns rgb | depth | dynamic (3 x 56) + a top view of side max(112, TOP_MIN)
    side = max(2 * 56, TOP_MIN)
    assert np.asarray(Image.open(written[0])).shape == (LABEL_H + side, 3 * 56 + side, 3)


def test_inspect_unconfigured_split_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["data", "inspect", "--config", str(ROOT / "experiments/synthetic_scratch.yaml"),
            "--data.init_args.test", "null"]
    assert main([*args, "--split", "test"]) == 2
    assert main([*args, "--data.init_args.nope", "1"]) == 2  # a bad override: the LightningCLI parse error
    assert not (tmp_path / "inspect").exists()


def test_clip_sheet_content(tmp_path: Path) -> None:
    gt = write_fixture(tmp_path)
    sample = DATASETS["custom"](tmp_path, num_frames=6, image_size=98, normalize=False, sequences=["walk"])[0]
    sheet = clip_sheet(sample)
    rows, (H, W) = 6, (70, 98)
    assert sheet.shape == (LABEL_H + rows * H, 3 * W + rows * H, 3)  # the top view is as tall as the grid
    grid = sheet[LABEL_H:, : 3 * W].reshape(rows, H, 3 * W, 3)
    rgb, depth, dynamic = grid[..., :W, :], grid[..., W : 2 * W, :], grid[..., 2 * W :, :]
    np.testing.assert_array_equal(rgb, (sample["images"].permute(0, 2, 3, 1).numpy() * 255).round())  # no tracks
    assert (depth[:, HOLE[0], HOLE[1]] == 0).all() and (depth.reshape(-1, 3).max(-1) > 0).mean() > 0.99
    moving = gt["sequences"]["walk"]["dynamic"]
    tinted = dynamic.astype(int) - rgb.astype(int)
    assert (tinted[moving][:, 0] >= 0).all() and (tinted[moving][:, 1:] <= 0).all() and (tinted[~moving] == 0).all()
    top = sheet[LABEL_H:, 3 * W :]
    assert (top == [255, 230, 0]).all(-1).any(), "the first camera is drawn in yellow"


def test_docs_snippet_yaml_and_default_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/custom_data.md: its Python snippet writes a root that validates, and its `data` section (in an
    experiment) inspects into the documented default folder."""
    doc = (ROOT / "docs/custom_data.md").read_text()
    monkeypatch.chdir(tmp_path)
    exec(compile(re.search(r"```python\n(.*?)```", doc, re.S).group(1), "custom_data.md", "exec"), {})
    assert main(["data", "validate", "--dataset", "custom", "--root", "my_data"]) == 0
    experiment = yaml.safe_load(experiment_copy("synthetic_scratch", tmp_path).read_text())
    experiment["data"] = yaml.safe_load(re.search(r"```yaml\n(.*?)```", doc, re.S).group(1))["data"]
    (tmp_path / "my_data.yaml").write_text(yaml.safe_dump(experiment))
    small = ["--data.init_args.image_size", "56", "--data.init_args.num_frames", "4"]
    assert main(["data", "inspect", "--config", "my_data.yaml", "--split", "val", *small]) == 0
    sheet = np.asarray(Image.open(tmp_path / "inspect/my_data/custom_scene_0001_0.png"))
    assert sheet.shape == (LABEL_H + TOP_MIN, 2 * 56 + TOP_MIN, 3)  # 4 rows x 42 px < TOP_MIN; no mask column
