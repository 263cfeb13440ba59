"""Pluggable LightningDataModules, one dataset per file.

`DATASETS` maps a name to its torch Dataset class; every class takes `root`, `num_frames`,
`image_size` and `normalize` and returns the sample dict of `page4d_lightning.types.Sample`.
"""

# Importing a reader module registers its dataset class in DATASETS: every name is registered here, so that
# `import datamodules` (as `page4d fit` does) knows each one, the mixture and the packed shards included.
import datamodules.bonn
import datamodules.co3d
import datamodules.custom
import datamodules.dycheck
import datamodules.dynamic_replica
import datamodules.kitti
import datamodules.kubric
import datamodules.mixture
import datamodules.packed
import datamodules.pointodyssey
import datamodules.sintel
import datamodules.spring
import datamodules.synthetic
import datamodules.tum
import datamodules.waymo  # noqa: F401
from datamodules.base import DATASETS, Page4DDataModule, collate_clips, get_dataset_class, register_dataset
from datamodules.sequence import Frame, SequenceDataset, Tracks
from datamodules.synthetic import SyntheticDataModule, SyntheticDynamicDataset
from datamodules.video import VideoDataModule, VideoDataset

__all__ = [
    "DATASETS",
    "Frame",
    "SequenceDataset",
    "Tracks",
    "Page4DDataModule",
    "SyntheticDataModule",
    "SyntheticDynamicDataset",
    "VideoDataModule",
    "VideoDataset",
    "collate_clips",
    "get_dataset_class",
    "register_dataset",
]
