"""The layering of DESIGN.md as import-linter contracts (setup.cfg `[importlinter]`): `lint-imports` passes on the
tree, and fails, naming the import, when a data module imports the LightningModule."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "src"), str(root)])}
    return subprocess.run([str(LINT_IMPORTS), "--config", str(root / "setup.cfg"), "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_tree_keeps_every_contract() -> None:
    run = _lint(ROOT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "3 kept, 0 broken" in run.stdout


def test_a_data_module_importing_the_lightning_module_breaks_a_contract(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    shutil.copytree(ROOT / "datamodules", tmp_path / "datamodules", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "setup.cfg", tmp_path / "setup.cfg")
    sequence = tmp_path / "datamodules" / "sequence.py"
    sequence.write_text(sequence.read_text() + "\nfrom page4d_lightning.module import Page4DModule  # noqa\n")
    run = _lint(tmp_path)
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-3000:]
    assert "datamodules.sequence -> page4d_lightning.module" in run.stdout
    assert "BROKEN" in run.stdout
