"""The `page4d` console script: LightningCLI `fit | validate | test | predict` plus tool subcommands.

    page4d fit --config experiments/synthetic.yaml
    page4d fit --config experiments/pointodyssey.yaml --data.root /data/pointodyssey
    page4d test --config experiments/synthetic.yaml --ckpt_path checkpoints/synthetic/last.ckpt
    page4d export-weights CKPT OUT.safetensors | page4d analyze-layers ... | page4d data validate|inspect ...
    page4d pack --dataset NAME --root R --out DIR

`main(args)` is callable from Python; it returns the exit code.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import torch
import yaml
from fsspec.utils import get_protocol
from jsonargparse import set_parsing_settings
from lightning.fabric.plugins.environments import ClusterEnvironment, SLURMEnvironment
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from page4d_lightning.callbacks import LastCheckpoint, MetricsFile, SlurmRequeue
from page4d_lightning.models.weights import checkpoint_model_args, torch_file_problem
from page4d_lightning.module import Page4DModule
from page4d_lightning.precision import TRUE_HALF, InputHalfPrecision

logger = logging.getLogger(__name__)

LIGHTNING_COMMANDS: dict[str, str] = {
    "fit": "train or fine-tune (writes last.ckpt whenever the run ends, Ctrl-C and SIGTERM included)",
    "validate": "validation metrics of a checkpoint (--ckpt_path) on the val split",
    "test": "test metrics of a checkpoint (--ckpt_path) on the test split",
    "predict": "run a checkpoint on the predict split",
}
TOOLS: dict[str, tuple[str, str]] = {
    "data": ("page4d_lightning.tools.data:data_main", "validate a dataset root file by file, or inspect the clips"),
    "pack": ("page4d_lightning.tools.pack:pack_main", "pack a dataset into HDF5 shards (dataset 'packed')"),
    "export-weights": ("page4d_lightning.tools.export_weights:export_weights_main",
                       "a run's checkpoint -> the model's weights with the official key names"),
    "eval": ("page4d_lightning.tools.evaluate:evaluate_main",
             "every benchmark protocol of experiments/eval/ with a data root -> results/<run>/ tables"),
    "analyze-layers": ("page4d_lightning.tools.analyze_layers:analyze_layers_main",
                       "per-block noise, attention and mask-swap measures; a freeze policy"),
    "ablation": ("page4d_lightning.tools.ablation:ablation_main",
                 "the miniature's ablation: 4 fine-tunes of the static start x seeds -> results/ablation/"),
    "ship": ("page4d_lightning.tools.ship:ship_main",
             "a trained start -> weights + a card with its recipe, val figures and the pose baselines"),
}
"""Tool subcommands: name -> ("module:function", one-line help); the function takes the remaining arguments and
returns an exit code. Imported only when called, so `page4d fit` never pays for a tool's imports."""

CKPT_PATH_KEYWORDS = ("last", "best", "hpc")
"""`--ckpt_path` values that Lightning resolves itself (no file name), besides `registry[:...]`."""


def is_local_checkpoint_file(ckpt_path: str | None) -> bool:
    """True for a `--ckpt_path` naming a local file (not a keyword, a registry entry or a remote URL)."""
    if not ckpt_path or str(ckpt_path) in CKPT_PATH_KEYWORDS or str(ckpt_path).startswith("registry"):
        return False
    return get_protocol(str(ckpt_path)) in ("file", "local")  # s3://, gs://, ...: Lightning's remote loading


DEFAULT_ROOT_DIR = os.path.join("checkpoints", "default")
"""Where a run without `--config` (or without `trainer.default_root_dir`) writes, instead of the current folder."""


def slurm_mismatch(trainer: Any) -> str | None:
    """Under `srun`: why the trainer's `devices` / `num_nodes` do not match the SLURM allocation, or None.

    Lightning runs one process per SLURM task, so `--trainer.devices` must equal the tasks per node and
    `--trainer.num_nodes` the nodes; the message names the `#SBATCH` option to change."""
    ntasks, tasks_per_node = os.environ.get("SLURM_NTASKS"), os.environ.get("SLURM_NTASKS_PER_NODE")
    nodes = os.environ.get("SLURM_NNODES", os.environ.get("SLURM_JOB_NUM_NODES"))
    if ntasks and int(ntasks) > 1 and tasks_per_node is None:
        return (f"SLURM runs {ntasks} tasks without SLURM_NTASKS_PER_NODE: set `#SBATCH --ntasks-per-node` (one task "
                "per GPU) instead of `--ntasks`")
    if tasks_per_node and "(" in tasks_per_node:  # e.g. "2(x3)": tasks differ between nodes
        return f"SLURM_NTASKS_PER_NODE={tasks_per_node}: every node must run the same number of tasks"
    devices, num_nodes = trainer.get("devices", "auto"), trainer.get("num_nodes", 1)
    if tasks_per_node and str(devices) not in ("auto", tasks_per_node):
        return (f"--trainer.devices {devices} does not match the SLURM allocation of {tasks_per_node} task(s) per "
                f"node (SLURM_NTASKS_PER_NODE): change `#SBATCH --ntasks-per-node` (and --gpus-per-node) to {devices}, "
                f"or pass --trainer.devices {tasks_per_node}")
    if nodes and str(num_nodes) != nodes:
        return (f"--trainer.num_nodes {num_nodes} does not match the SLURM allocation of {nodes} node(s) "
                f"(SLURM_NNODES): change `#SBATCH --nodes` (or `sbatch --nodes`) to {num_nodes}, or pass "
                f"--trainer.num_nodes {nodes}")
    if ntasks and tasks_per_node and nodes and int(ntasks) != int(tasks_per_node) * int(nodes):
        return (f"SLURM_NTASKS={ntasks} is not nodes x tasks per node = {nodes} x {tasks_per_node}: set "
                "`#SBATCH --nodes` and `--ntasks-per-node` only")
    return None


def usage() -> str:
    """The top-level help: every command, the tools included."""
    width = max(map(len, [*LIGHTNING_COMMANDS, *TOOLS])) + 2
    lines = ["usage: page4d <command> [options]     page4d <command> --help: the options of one command", "",
             "Train, evaluate and run PAGE-4D.", "", "training and evaluation (LightningCLI: --config YAML, "
             "then --section.key value overrides):"]
    lines += [f"  {name:<{width}}{text}" for name, text in LIGHTNING_COMMANDS.items()]
    lines += ["", "tools:"]
    lines += [f"  {name:<{width}}{text}" for name, (_, text) in TOOLS.items()]
    lines += ["", "example: page4d fit --config experiments/synthetic.yaml --trainer.max_steps 100"]
    return "\n".join(lines) + "\n"


def _config_bases(path: Path, seen: tuple[Path, ...]) -> list[str]:
    """The configs that `path` composes (its `base:` list, relative to its folder), depth first, then `path`."""
    resolved = path.resolve()
    if resolved in seen:
        raise ValueError(f"{path}: `base` loop through {' -> '.join(map(str, seen))}")
    try:
        content = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return [str(path)]  # LightningCLI reports the unreadable file itself
    bases = content.get("base") if isinstance(content, dict) else None
    if bases is None:
        return [str(path)]
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ValueError(f"{path}: `base` expected a list of config paths (relative to its folder), got {bases!r}")
    out: list[str] = []
    for base in bases:
        base_path = path.parent / base
        if not base_path.is_file():
            raise ValueError(f"{path}: base config {base!r} not found (looked for {base_path})")
        out += _config_bases(base_path, (*seen, resolved))
    return [*out, str(path)]


def expand_config_bases(argv: list[str]) -> list[str]:
    """Every `--config FILE` (or `-c`) whose YAML lists `base: [...]` becomes `--config BASE ... --config FILE`:
    the shared blocks of experiments/base/ are composed with LightningCLI's multiple `--config`, later files
    overriding earlier ones key by key."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        flag, sep, value = arg.partition("=")
        if flag in ("--config", "-c") and (sep or i + 1 < len(argv)):
            path = value if sep else argv[i + 1]
            configs = list(dict.fromkeys(_config_bases(Path(path), ())))  # a base listed twice is applied once
            for config in configs:
                out += ["--config", config]
            if len(configs) > 1:  # merged now: a printed or saved config must not name them again
                out += ["--base", "null"]
            i += 1 if sep else 2
            continue
        out.append(arg)
        i += 1
    return out


PREDICT_SHORTHAND = {  # `page4d predict` flag -> VideoDataModule init arg (None: the export writer's `out`)
    "--input": "input", "--out": None, "--query-points": "query_points", "--query-grid": "query_grid",
    "--stride": "stride", "--fps": "fps", "--max-frames": "max_frames", "--window": "window",
    "--overlap": "overlap", "--image-size": "image_size",
}
VIDEO_DATAMODULE = "datamodules.video.VideoDataModule"
VIDEO_WRITER = "page4d_lightning.callbacks.VideoExportWriter"


def expand_predict_shorthand(argv: list[str]) -> list[str]:
    """`page4d predict --ckpt_path X --input VIDEO --out DIR [--query-points FILE | --query-grid G] [--stride N]
    [--fps F] [--max-frames N] [--window N] [--overlap N] [--image-size W]` -> the LightningCLI form: `--data`
    VideoDataModule with those init args and `--trainer.callbacks+=` VideoExportWriter(out=DIR). Without `--config`,
    the model preset comes from the checkpoint's hyper-parameters, or is vggt_1b for `--model.weights FILE`
    (official VGGT-1B / PAGE-4D files) unless `--model.preset` is given. Other argv are returned unchanged."""
    if not argv or argv[0] != "predict":
        return argv
    rest, values = [argv[0]], {}
    i = 1
    while i < len(argv):
        flag, sep, value = argv[i].partition("=")
        if flag in PREDICT_SHORTHAND:
            if not sep:
                if i + 1 >= len(argv):
                    raise ValueError(f"{flag}: expected a value")
                value = argv[i + 1]
            values[flag] = value
            i += 1 if sep else 2
            continue
        rest.append(argv[i])
        i += 1
    if not values:
        return argv
    if "--input" not in values or "--out" not in values:
        raise ValueError("page4d predict: --input VIDEO|FOLDER|'GLOB' and --out DIR go together "
                         f"(got {', '.join(sorted(values))})")
    out = [*rest, "--data.class_path", VIDEO_DATAMODULE]
    out += [f"--data.init_args.{PREDICT_SHORTHAND[f]}={v}" for f, v in values.items() if PREDICT_SHORTHAND[f]]
    out += [f"--trainer.callbacks+={VIDEO_WRITER}", f"--trainer.callbacks.out={values['--out']}"]
    flags = {a.partition("=")[0] for a in rest}
    if not flags & {"--config", "-c", "--model.preset", "--model"}:
        ckpt = _flag_value(rest, "--ckpt_path")
        if ckpt is not None and is_local_checkpoint_file(ckpt):
            problem = torch_file_problem(ckpt)
            if problem is not None:
                raise ValueError(f"--ckpt_path {ckpt}: {problem}; expected a Lightning checkpoint of `page4d fit`")
            out += checkpoint_model_args(ckpt)
        elif _flag_value(rest, "--model.weights") is not None:
            out += ["--model.preset", "vggt_1b"]
    return out


def _flag_value(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        flag, sep, value = arg.partition("=")
        if flag == name:
            return value if sep else (argv[i + 1] if i + 1 < len(argv) else None)
    return None


def run_tool(name: str, args: list[str]) -> int:
    """Import and call the tool subcommand `name` with `args`."""
    module_name, func_name = TOOLS[name][0].split(":")
    return int(getattr(importlib.import_module(module_name), func_name)(args))


class Page4DCLI(LightningCLI):
    """LightningCLI with the project's defaults:

    - `--ckpt_path FILE` is checked before anything loads it (a truncated file is named);
    - with `--ckpt_path FILE` the model's initial `weights` are not loaded: the checkpoint restores the whole
      model, so evaluating or resuming a run does not need the file it was initialised from; the checkpoint
      sets the architecture (preset, model_overrides), the config and command line everything else;
    - `fit` always has a `LastCheckpoint` (one is added in `trainer.default_root_dir` when the config has none);
    - `validate` / `test` write their metrics to `trainer.default_root_dir/metrics_<stage>.{json,csv}` (`MetricsFile`);
    - `bf16-true` / `16-true` cast the images only (`page4d_lightning.precision`): ground truth stays float32;
    - under SLURM (`srun`), the trainer's devices and nodes must match the allocation (checked before anything is
      built, naming the `#SBATCH` option), and `fit` handles pre-emption with `SlurmRequeue` instead of
      Lightning's in-handler save.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--base", type=list[str] | None, default=None,
                            help="configs this config composes (paths relative to it); `page4d` loads them first")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if is_local_checkpoint_file(ckpt_path):
            problem = torch_file_problem(ckpt_path)
            if problem is not None:
                parser.error(f"--ckpt_path {ckpt_path}: {problem}; expected a Lightning checkpoint of `page4d fit`")
        if subcommand and SLURMEnvironment.detect():
            problem = slurm_mismatch(self.config[subcommand].get("trainer") or {})
            if problem:
                parser.error(problem)

    def _parse_ckpt_path(self) -> None:
        """With `--ckpt_path FILE`, the checkpoint fixes the architecture only (`preset`, `model_overrides`, so that
        its weights load); every other model argument comes from the config and the command line. Lightning's own
        version lets all the checkpoint's hyper-parameters override them, which would silently drop an
        `evaluation` protocol or an evaluation mask strength given for this run."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not (ckpt_path and Path(ckpt_path).is_file()):
            return
        checkpoint = torch.load(ckpt_path, weights_only=True, map_location="cpu", mmap=True)
        hparams = checkpoint.get("hyper_parameters") or {} if isinstance(checkpoint, dict) else {}
        architecture = {k: hparams[k] for k in ("preset", "model_overrides") if k in hparams}
        if architecture:
            self.config = self.parser.parse_object({subcommand: {"model": architecture}}, self.config)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        ckpt_path = config.get("ckpt_path")
        if ckpt_path and os.path.isfile(ckpt_path) and config.model.get("weights"):
            logger.info("--ckpt_path %s restores the whole model: the initial weights %s are not loaded",
                        ckpt_path, config.model.weights)
            config.model.weights = None
            config.model.track_head_weights = None

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer_config = self._get(self.config_init, "trainer", default={})
        if trainer_config.get("precision") in TRUE_HALF and "precision" not in kwargs:
            plugins = trainer_config.get("plugins") or []
            plugins = list(plugins) if isinstance(plugins, list) else [plugins]
            kwargs["plugins"] = [*plugins, InputHalfPrecision(trainer_config["precision"])]
            kwargs["precision"] = None
        callbacks = trainer_config.get("callbacks") or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        wants_last = self.subcommand == "fit" and trainer_config.get("enable_checkpointing") is not False
        if wants_last and not any(isinstance(cb, LastCheckpoint) for cb in callbacks):
            root = trainer_config.get("default_root_dir") or DEFAULT_ROOT_DIR
            kwargs["callbacks"] = callbacks = [*callbacks, LastCheckpoint(dirpath=os.fspath(root))]
        if self.subcommand in ("validate", "test") and not any(isinstance(cb, MetricsFile) for cb in callbacks):
            root = trainer_config.get("default_root_dir") or DEFAULT_ROOT_DIR
            kwargs["callbacks"] = callbacks = [*callbacks, MetricsFile(os.fspath(root))]
        plugins = kwargs.get("plugins", trainer_config.get("plugins")) or []
        plugins = list(plugins) if isinstance(plugins, list) else [plugins]
        if self.subcommand == "fit" and SLURMEnvironment.detect():
            if not any(isinstance(p, ClusterEnvironment) for p in plugins):
                environment = SLURMEnvironment(auto_requeue=False)  # SlurmRequeue handles the signal instead
                kwargs["plugins"] = [*plugins, environment]
                signum = environment.requeue_signal
                if signum is not None and not any(isinstance(cb, SlurmRequeue) for cb in callbacks):
                    kwargs["callbacks"] = [*callbacks, SlurmRequeue(signum)]
        return super().instantiate_trainer(**kwargs)


def build_cli(args: list[str] | None = None, run: bool = True, cli_class: type[Page4DCLI] = Page4DCLI) -> LightningCLI:
    """Build the LightningCLI over `Page4DModule` and any `Page4DDataModule` subclass (`args` with their
    `base:` configs already expanded, see `expand_config_bases`)."""
    # imported here so that `page4d_lightning` itself never depends on the `datamodules` package
    from datamodules import Page4DDataModule

    # atomic checkpoint saves by default (shown by --print_config); a YAML that sets `trainer.plugins` replaces
    # this list, so it keeps AtomicCheckpointIO in it, or plugins are added with `--trainer.plugins+=CLASS`
    atomic_io = {"class_path": "page4d_lightning.checkpointing.AtomicCheckpointIO"}
    set_parsing_settings(omegaconf_absolute_to_relative_paths=True)
    return cli_class(
        Page4DModule,
        Page4DDataModule,
        subclass_mode_data=True,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
        # ${trainer.default_root_dir} in a config resolves after every --config and override is merged
        parser_kwargs={"parser_mode": "omegaconf+"},
        trainer_defaults={"plugins": [atomic_io], "default_root_dir": DEFAULT_ROOT_DIR},
    )


def main(args: list[str] | None = None) -> int:
    """Entry point of the `page4d` console script; returns the exit code."""
    argv = list(sys.argv[1:] if args is None else args)
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(usage())
        return 0 if argv else 2
    if argv[0] in TOOLS:
        return run_tool(argv[0], argv[1:])
    try:
        expanded = expand_config_bases(expand_predict_shorthand(argv))
    except ValueError as err:
        sys.stderr.write(f"page4d: error: {err}\n")
        return 2
    if args is None:  # the console script: LightningCLI reads sys.argv itself
        sys.argv[1:] = expanded
    try:
        build_cli(None if args is None else expanded)
    except SIGTERMException:  # the run stopped at the end of a batch and saved last.ckpt (LastCheckpoint)
        logger.warning("stopped by SIGTERM")
        return 128 + signal.SIGTERM
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
