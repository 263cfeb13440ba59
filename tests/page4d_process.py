"""Run the `page4d` console script as a user does: a fresh process, the installed entry point, a working folder.

A test that goes through here cannot pass because the test process imported something (a registry entry, a
module) that the user's process never imports.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PAGE4D = Path(sys.executable).with_name("page4d")  # the console script of the environment running the tests


def page4d_env() -> dict[str, str]:
    """The environment of a `page4d` process: the repository on PYTHONPATH (so `tests.*` helpers such as
    `tests.step_marker.StepMarker` can be named in a config), one intra-op thread."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_page4d(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """`page4d ARGS` in `cwd`; returns the finished process (stdout and stderr as text)."""
    return subprocess.run([str(PAGE4D), *args], cwd=cwd, env=page4d_env(), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def start_page4d(*args: str, cwd: Path) -> subprocess.Popen:
    """`page4d ARGS` in `cwd`, running in the background (for tests that signal it)."""
    return subprocess.Popen([str(PAGE4D), *args], cwd=cwd, env=page4d_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)


def explain(process: subprocess.CompletedProcess) -> str:
    """The tail of a failed process's output, for assertion messages."""
    return f"exit {process.returncode}\n{(process.stdout or '')[-3000:]}\n{(process.stderr or '')[-6000:]}"


def experiment_copy(name: str, folder: Path, replacements: dict[str, str] | None = None) -> Path:
    """experiments/<name>.yaml copied into `folder` with text `replacements` applied (each must occur) and its
    `base:` configs made absolute, so that the copy composes the same bases from anywhere."""
    source = ROOT / "experiments" / f"{name}.yaml"
    text = source.read_text()
    for old, new in (replacements or {}).items():
        assert old in text, f"{source}: no {old!r}"
        text = text.replace(old, new)
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.startswith("base:"):
            bases = yaml.safe_load(line)["base"]
            lines[i] = "base: [" + ", ".join(str(source.parent / b) for b in bases) + "]\n"
    path = folder / f"{name}_copy.yaml"
    path.write_text("".join(lines))
    return path
