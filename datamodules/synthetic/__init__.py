"""Procedural dynamic scenes with exact ground truth, the embedded default dataset (registered as "synthetic"):
`scene.py` draws a room, objects and their motion, `render.py` ray-casts and shades them, `dataset.py` builds
clips (tracks, dynamic masks, normalised GT) and the DataModule."""

from datamodules.synthetic.dataset import SyntheticDataModule, SyntheticDynamicDataset

__all__ = ["SyntheticDataModule", "SyntheticDynamicDataset"]
