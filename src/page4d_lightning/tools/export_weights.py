"""`page4d export-weights CKPT OUT.safetensors`: a run's model weights with the official key names."""

from __future__ import annotations

import argparse
import logging

from page4d_lightning.checkpointing import export_weights


def export_weights_main(args: list[str]) -> int:
    """`page4d export-weights CKPT OUT.safetensors`: the command line of `export_weights`."""
    parser = argparse.ArgumentParser(
        prog="page4d export-weights",
        description="Export the PAGE4D weights of a Page4DModule Lightning checkpoint (official key names), "
        "loadable with page4d_lightning.models.load_weights or the official code.",
    )
    parser.add_argument("checkpoint", help="Lightning checkpoint written by `page4d fit` (e.g. last.ckpt)")
    parser.add_argument("output", help="output file: .safetensors (recommended) or .pt (plain state dict)")
    ns = parser.parse_args(args)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # a no-op where logging is configured
    try:
        export_weights(ns.checkpoint, ns.output)
    except (FileNotFoundError, ValueError) as err:
        parser.exit(2, f"page4d export-weights: error: {err}\n")
    return 0
