"""The `page4d` CLI and the experiments: every YAML parses, typos fail by name, the synthetic default runs
fit -> validate -> test -> predict through the real CLI, and `make train` rejects unknown experiments."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from page4d_lightning.cli import expand_config_bases, is_local_checkpoint_file, main
from tests.page4d_process import experiment_copy

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((ROOT / "experiments").glob("*.yaml"))
SMALL = ["--trainer.accelerator", "cpu", "--data.init_args.image_size", "56", "--data.init_args.num_frames", "2"]
SMALL += ["--data.init_args.batch_size", "1", "--data.init_args.num_workers", "0"]


def _small_experiment(tmp_path: Path) -> str:
    """experiments/synthetic_scratch.yaml with 2-clip val/test splits (`--trainer.limit_val_batches 1` would
    parse as the float 1.0, i.e. all batches, so the splits themselves are made small)."""
    return str(experiment_copy("synthetic_scratch", tmp_path, {"num_clips: 16": "num_clips: 2"}))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_every_experiment_parses(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each experiment resolves (its `base:` configs composed, `${trainer.default_root_dir}` interpolated) and
    writes every output of the run into the one folder it names."""
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(path), "--print_config"])
    assert exc.value.code == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["model"]["preset"] in ("tiny", "mini", "vggt_1b")
    assert "class_path" in config["data"]
    root = config["trainer"]["default_root_dir"]
    assert root == f"checkpoints/{path.stem}"
    dirpaths = [c["init_args"]["dirpath"] for c in config["trainer"]["callbacks"] if "dirpath" in c["init_args"]]
    assert dirpaths == [root, root] and config["trainer"]["logger"]["init_args"]["save_dir"] == root
    assert path.read_text().startswith("#"), "an experiment opens with how to run it"


def test_a_printed_config_runs_again(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--print_config` shows the merged configuration with `base: null`: saved to a file, it parses as is."""
    experiment = str(ROOT / "experiments" / "pointodyssey.yaml")
    with pytest.raises(SystemExit):
        main(["fit", "--config", experiment, "--print_config"])
    printed = capsys.readouterr().out
    assert yaml.safe_load(printed)["base"] is None
    (tmp_path / "printed.yaml").write_text(printed)
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(tmp_path / "printed.yaml"), "--print_config"])
    assert yaml.safe_load(capsys.readouterr().out) == yaml.safe_load(printed)


def test_the_output_folder_moves_with_one_override(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(EXPERIMENTS[0]), "--trainer.default_root_dir", "/runs/x", "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    assert {c["init_args"].get("dirpath", "/runs/x") for c in config["trainer"]["callbacks"]} == {"/runs/x"}
    assert config["trainer"]["logger"]["init_args"]["save_dir"] == "/runs/x"


def test_base_configs_are_composed_before_the_experiment(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "one.yaml").write_text("trainer: {max_steps: 1}\n")
    (tmp_path / "b" / "two.yaml").write_text("base: [one.yaml]\ntrainer: {max_steps: 2}\n")
    (tmp_path / "exp.yaml").write_text("base: [b/two.yaml]\n")
    args = expand_config_bases(["fit", "--config", str(tmp_path / "exp.yaml"), "--trainer.max_steps", "3"])
    one, two, exp = (str(tmp_path / "b" / "one.yaml"), str(tmp_path / "b" / "two.yaml"), str(tmp_path / "exp.yaml"))
    assert args == ["fit", "--config", one, "--config", two, "--config", exp, "--base", "null", "--trainer.max_steps",
                    "3"]
    (tmp_path / "twice.yaml").write_text("base: [b/two.yaml, b/one.yaml]\n")  # one.yaml is already two's base
    twice = expand_config_bases(["--config", str(tmp_path / "twice.yaml")])
    assert twice == ["--config", one, "--config", two, "--config", str(tmp_path / "twice.yaml"), "--base", "null"]
    (tmp_path / "loop.yaml").write_text("base: [loop.yaml]\n")
    with pytest.raises(ValueError, match="`base` loop"):
        expand_config_bases(["--config", str(tmp_path / "loop.yaml")])
    (tmp_path / "missing.yaml").write_text("base: [nope.yaml]\n")
    with pytest.raises(ValueError, match="base config 'nope.yaml' not found"):
        expand_config_bases(["--config", str(tmp_path / "missing.yaml")])


def test_yaml_typo_names_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = experiment_copy("synthetic_scratch", tmp_path, {"  preset: tiny": "  presett: tiny"})
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(bad)])
    assert exc.value.code != 0
    assert "presett" in capsys.readouterr().err


def test_fit_help_works(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--help"])
    assert exc.value.code == 0
    assert "--model.preset" in capsys.readouterr().out


def test_synthetic_fit_validate_test_predict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = ["--config", _small_experiment(tmp_path), *SMALL]
    main(["fit", *config, "--trainer.max_steps", "2", "--trainer.val_check_interval", "2"])
    out = tmp_path / "checkpoints" / "synthetic_scratch"
    assert (out / "last.ckpt").is_file()
    assert list(out.glob("best-step=*.ckpt")), "the best checkpoint by val/ate is kept"
    assert list((out / "tb").rglob("events.out.tfevents.*")), "TensorBoard events are written"
    ckpt = ["--ckpt_path", str(out / "last.ckpt")]
    main(["validate", *config, *ckpt])
    main(["test", *config, *ckpt])
    writer = ["--trainer.callbacks+=page4d_lightning.callbacks.NpzPredictionWriter"]
    main(["predict", *config, *ckpt, *writer, "--trainer.callbacks.output_dir", str(tmp_path / "pred")])
    written = sorted((tmp_path / "pred").glob("*.npz"))
    assert [p.stem for p in written] == ["synthetic_test_2_000000", "synthetic_test_2_000001"]
    arrays = np.load(written[0])
    assert arrays["extrinsics"].shape == (2, 3, 4) and arrays["intrinsics"].shape == (2, 3, 3)
    assert arrays["depth"].shape == (2, 56, 56) and (arrays["depth"] > 0).all()
    assert arrays["dynamic_mask"].shape == (2, 4, 4)


def test_make_train_unknown_experiment_lists_the_available_ones() -> None:
    result = subprocess.run(["make", "-s", "-C", str(ROOT), "train", "DATASET=nope"], capture_output=True, text=True)
    assert result.returncode != 0
    assert "unknown DATASET=nope" in result.stderr
    assert "synthetic" in result.stderr


def test_only_local_checkpoint_files_are_checked_before_loading(tmp_path: Path) -> None:
    """Lightning resolves keywords, registry entries and remote URLs itself; only local files are checked."""
    for lightning_resolves in ("last", "best", "hpc", "registry", "registry:team/model:latest", "s3://bucket/x.ckpt",
                               None, ""):
        assert not is_local_checkpoint_file(lightning_resolves), lightning_resolves
    assert is_local_checkpoint_file(str(tmp_path / "missing.ckpt")) and is_local_checkpoint_file("runs/last.ckpt")

