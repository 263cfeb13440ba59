"""`page4d pack`: pack a registered file reader's dataset into HDF5 shards (read back as the dataset "packed").

    page4d pack --dataset pointodyssey --root /data/pointodyssey --out /data/packed/po --split train
"""

from __future__ import annotations

import argparse
import json

from datamodules import SequenceDataset, get_dataset_class
from datamodules.packed_writer import pack_dataset


def pack_main(args: list[str]) -> int:
    """`page4d pack`: pack a registered SequenceDataset into HDF5 shards; returns the exit code."""
    parser = argparse.ArgumentParser(prog="page4d pack", description=pack_main.__doc__)
    parser.add_argument("--dataset", required=True, help="registry name of the reader (e.g. pointodyssey)")
    parser.add_argument("--root", required=True, help="root folder of the downloaded dataset")
    parser.add_argument("--out", required=True, help="output folder; shards go to <out>/<split>/")
    parser.add_argument("--split", default="train")
    parser.add_argument("--frames-per-shard", type=int, default=256)
    parser.add_argument("--compression", choices=("gzip", "lzf", "none"), default="gzip",
                        help="per-frame chunk filter: gzip (default), lzf, or none (fastest to read, largest)")
    parser.add_argument("--dataset-args", default="{}", help="JSON of extra reader arguments, e.g. '{\"a\": 1}'")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers decoding the source frames")
    parser.add_argument("--skip-bad-sequences", action="store_true", help="drop sequences with a bad frame (logged)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing pack of this split")
    opts = parser.parse_args(args)
    cls = get_dataset_class(opts.dataset)
    if not issubclass(cls, SequenceDataset):
        raise ValueError(f"--dataset: {opts.dataset!r} ({cls.__name__}) is not a file-backed SequenceDataset")
    extra = json.loads(opts.dataset_args)
    dataset = cls(root=opts.root, num_frames=1, normalize=False, split=opts.split, **extra)
    pack_dataset(dataset, opts.out, opts.frames_per_shard, None if opts.compression == "none" else opts.compression,
                 opts.workers, opts.skip_bad_sequences, opts.overwrite, registry_name=opts.dataset)
    return 0
