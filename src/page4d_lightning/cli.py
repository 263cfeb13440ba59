"""The `page4d` console script: LightningCLI `fit | validate | test | predict` plus tool subcommands.

    page4d fit --config experiments/synthetic.yaml
    page4d fit --config experiments/pointodyssey.yaml --data.root /data/pointodyssey
    page4d test --config experiments/synthetic.yaml --ckpt_path checkpoints/synthetic/last.ckpt

`main(args)` is callable from Python (tests call `main(["fit", ...])`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from lightning.pytorch.cli import LightningCLI

from page4d_lightning.module import Page4DModule

TOOLS: dict[str, Callable[[list[str]], int]] = {}
"""Tool subcommands (name -> function taking the remaining arguments, returning an exit code)."""


def build_cli(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """Build the LightningCLI over `Page4DModule` and any `Page4DDataModule` subclass."""
    # imported here so that `page4d_lightning` itself never depends on the `datamodules` package
    from datamodules import Page4DDataModule

    return LightningCLI(
        Page4DModule,
        Page4DDataModule,
        subclass_mode_data=True,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
    )


def main(args: list[str] | None = None) -> int:
    """Entry point of the `page4d` console script."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in TOOLS:
        return TOOLS[argv[0]](argv[1:])
    build_cli(args)  # None: LightningCLI reads sys.argv itself
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
