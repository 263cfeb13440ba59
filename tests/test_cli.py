"""The `page4d` CLI and the experiments: every YAML parses, typos fail by name, the synthetic default runs
fit -> validate -> test -> predict through the real CLI, and `make train` rejects unknown experiments."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from lightning.pytorch.cli import LightningCLI

from datamodules import Page4DDataModule
from page4d_lightning.cli import main
from page4d_lightning.module import Page4DModule

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((ROOT / "experiments").glob("*.yaml"))
SMALL = ["--trainer.accelerator", "cpu", "--data.init_args.image_size", "56", "--data.init_args.num_frames", "2"]
SMALL += ["--data.init_args.batch_size", "1", "--data.init_args.num_workers", "0"]


def _small_experiment(tmp_path: Path) -> str:
    """experiments/synthetic.yaml with 2-clip val/test splits (`--trainer.limit_val_batches 1` would
    parse as the float 1.0, i.e. all batches, so the splits themselves are made small)."""
    text = (ROOT / "experiments" / "synthetic.yaml").read_text()
    assert text.count("num_clips: 16") == 2
    path = tmp_path / "synthetic_small.yaml"
    path.write_text(text.replace("num_clips: 16", "num_clips: 2"))
    return str(path)


class ParseOnlyCLI(LightningCLI):
    """Parses and validates a configuration without building the model (the full preset is 1.2 B params)."""

    def instantiate_classes(self) -> None:
        pass


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_every_experiment_parses(path: Path) -> None:
    cli = ParseOnlyCLI(Page4DModule, Page4DDataModule, subclass_mode_data=True, run=False, args=["--config", str(path)])
    assert cli.config["model"]["preset"] in ("tiny", "vggt_1b")
    assert "class_path" in cli.config["data"]
    assert path.read_text().startswith("#"), "an experiment opens with how to run it"


def test_yaml_typo_names_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "experiments" / "synthetic.yaml").read_text().replace("  preset: tiny", "  presett: tiny"))
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
    out = tmp_path / "checkpoints" / "synthetic"
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
