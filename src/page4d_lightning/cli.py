"""The `page4d` console script: LightningCLI `fit | validate | test | predict` plus tool subcommands.

    page4d fit --config experiments/synthetic.yaml
    page4d fit --config experiments/pointodyssey.yaml --data.root /data/pointodyssey
    page4d test --config experiments/synthetic.yaml --ckpt_path checkpoints/synthetic/last.ckpt
    page4d export-weights CKPT OUT.safetensors | page4d analyze-layers ... | page4d data validate|inspect ...
    page4d pack --dataset NAME --root R --out DIR

`main(args)` is callable from Python (tests call `main(["fit", ...])`).
"""

from __future__ import annotations

import importlib
import sys

from lightning.pytorch.cli import LightningCLI

from page4d_lightning.module import Page4DModule

TOOLS: dict[str, str] = {
    "export-weights": "page4d_lightning.checkpointing:export_weights_main",
    "analyze-layers": "page4d_lightning.finetune:analyze_layers_main",
    "data": "datamodules.tools:data_main",
    "pack": "datamodules.packed:pack_main",
}
"""Tool subcommands: name -> "module:function"; the function takes the remaining arguments and returns
an exit code. Imported only when called, so `page4d fit` never pays for a tool's imports."""


def run_tool(name: str, args: list[str]) -> int:
    """Import and call the tool subcommand `name` with `args`."""
    module_name, func_name = TOOLS[name].split(":")
    return int(getattr(importlib.import_module(module_name), func_name)(args))


def build_cli(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """Build the LightningCLI over `Page4DModule` and any `Page4DDataModule` subclass."""
    # imported here so that `page4d_lightning` itself never depends on the `datamodules` package
    from datamodules import Page4DDataModule

    # atomic checkpoint saves by default (shown by --print_config); a YAML that sets `trainer.plugins` replaces
    # this list, so it keeps AtomicCheckpointIO in it, or plugins are added with `--trainer.plugins+=CLASS`
    atomic_io = {"class_path": "page4d_lightning.checkpointing.AtomicCheckpointIO"}
    return LightningCLI(
        Page4DModule,
        Page4DDataModule,
        subclass_mode_data=True,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"plugins": [atomic_io]},
    )


def main(args: list[str] | None = None) -> int:
    """Entry point of the `page4d` console script."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in TOOLS:
        return run_tool(argv[0], argv[1:])
    build_cli(args)  # None: LightningCLI reads sys.argv itself
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
