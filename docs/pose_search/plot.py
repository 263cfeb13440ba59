"""Plot the pose-search attempts (docs/pose_search.md): val ATE and RPE-rot of each run against the uninformed
baselines of its val clips.

    python docs/pose_search/plot.py RUN_DIR[=LABEL] ... --card weights/static_start.json \
        --out docs/pose_search/curves.png

RUN_DIR is a run's default_root_dir (its TensorBoard events under tb/); the baselines come from the card.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def curve(run: Path, tag: str) -> list[tuple[int, float]]:
    files = sorted(run.glob("tb/*/events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
    points: dict[int, float] = {}
    for f in files:  # a resumed run continues in a new event file
        events = EventAccumulator(str(f), size_guidance={"scalars": 0})
        events.Reload()
        if tag in events.Tags()["scalars"]:
            points.update({e.step + 1: e.value for e in events.Scalars(tag)})
    return sorted(points.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="RUN_DIR or RUN_DIR=LABEL")
    parser.add_argument("--card", required=True, help="a ship card (.json) with the baselines of the val clips")
    parser.add_argument("--out", required=True)
    ns = parser.parse_args()
    baselines = json.loads(Path(ns.card).read_text())["baselines"]
    keys = (("ate", "val ATE"), ("rpe_rot", "val RPE-rot (deg)"), ("ate_from_points", "val ATE from point maps"))
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.6))
    for ax, (key, title) in zip(axes, keys):
        for index, spec in enumerate(ns.runs):
            path, _, label = spec.partition("=")
            points = curve(Path(path), f"val/{key}")
            if points:  # one colour per run in every panel
                ax.plot(*zip(*points), marker="o", ms=2, color=f"C{index}", label=label or Path(path).name)
        base_key = key.replace("_from_points", "")
        for name, style in (("constant", "--"), ("random_centres", ":")):
            value = baselines[name][base_key]
            ax.axhline(value, color="k", ls=style, lw=1, label=f"{name} baseline")
            ax.axhline(value / 3, color="g", ls=style, lw=0.8, alpha=0.6)
        ax.set_title(title + " (green: 3x better)")
        ax.set_xlabel("optimiser step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(ns.out, dpi=110)


if __name__ == "__main__":
    main()
