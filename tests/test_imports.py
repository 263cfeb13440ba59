"""The pure-PyTorch parts never import Lightning (they run in a notebook or another trainer)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BLOCKER = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name == "lightning" or name.startswith(("lightning.", "pytorch_lightning")):
            raise ImportError(f"blocked import of {name}")
        return None
sys.meta_path.insert(0, _Block())
import page4d_lightning.models, page4d_lightning.geometry, page4d_lightning.losses
import page4d_lightning.metrics.functional
print("ok")
"""


def test_models_geometry_losses_import_without_lightning() -> None:
    result = subprocess.run(
        [sys.executable, "-c", BLOCKER], capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT / "src")}
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_setup_cfg_lists_every_package() -> None:
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    listed = set(cfg["options"]["packages"].split())
    found = {
        ".".join(p.parent.relative_to(ROOT / "src").parts) for p in (ROOT / "src").rglob("__init__.py")
    } | {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "datamodules").rglob("__init__.py")}
    assert found == listed, f"setup.cfg [options] packages must list exactly {sorted(found)}"
