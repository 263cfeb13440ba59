"""Pluggable LightningDataModules, one dataset per file.

`DATASETS` maps a name to its torch Dataset class; every class takes `root`, `num_frames`,
`image_size` and `normalize` and returns the sample dict of `page4d_lightning.types.Sample`.
"""

from datamodules.base import DATASETS, Page4DDataModule, collate_clips, get_dataset_class, register_dataset
from datamodules.synthetic import SyntheticDataModule, SyntheticDynamicDataset

register_dataset("synthetic")(SyntheticDynamicDataset)

__all__ = [
    "DATASETS",
    "Page4DDataModule",
    "SyntheticDataModule",
    "SyntheticDynamicDataset",
    "collate_clips",
    "get_dataset_class",
    "register_dataset",
]
