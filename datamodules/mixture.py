"""Weighted mixture of datasets (the paper's training mix), and its YAML form, the registered "mixture".

`MixtureDataset` maps index k of an epoch to (component c, clip index i): c is drawn with the given
probabilities, and i walks a per-epoch permutation of component c (each clip of a component is seen once
before any repeats). Both are pure functions of (seed, epoch, k), so every DataLoader worker and every
DDP rank agrees on the mapping (the DistributedSampler only splits the indices k across ranks).

In an experiment YAML (`Page4DDataModule(dataset="mixture", ...)`), one entry per component, named by its
registry name (or any label plus `dataset: <registry name>`), the common arguments shared by all:

    data:
      class_path: datamodules.Page4DDataModule
      init_args:
        dataset: mixture
        num_frames: 8
        image_size: 518
        train:
          samples_per_epoch: 48000
          aspect_ratio: [0.33, 1.0]      # shared keyword arguments go to every component
          augment: true
          components:
            pointodyssey: {weight: 0.15, root: /data/pointodyssey, stride: [1, 8]}  # own value beats the shared one
            po_val: {dataset: pointodyssey, weight: 0.02, root: /data/pointodyssey, split: val}
            kubric: {weight: 0.10, root: /data/kubric, num_tracks: 0}
            waymo_packed: {dataset: packed, weight: 0.21, root: /data/packed/waymo}
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from datamodules.base import get_dataset_class, register_dataset
from datamodules.sequence import parse_clip_key

logger = logging.getLogger(__name__)

# The paper's training mixture as sampling probabilities. The official recipe (kaichen-z/PAGE4D,
# training/config/training_final.yaml) concatenates the datasets with these per-dataset sample counts
# (`len_train`) and draws uniformly over the concatenation, so the shares are count / 48000:
# PointOdyssey train 5000 + val 1000 + test 1000 = 7000; Dynamic Replica train 10000 + val 1000 = 11000;
# Kubric 5000; Spring 2500 per eye x 2 eyes = 5000; CO3D 10000; Waymo 10000 (rounded to 2 decimals).
PAPER_SAMPLE_COUNTS = {
    "pointodyssey": 7000,
    "dynamic_replica": 11000,
    "kubric": 5000,
    "spring": 5000,
    "co3d": 10000,
    "waymo": 10000,
}
PAPER_MIXTURE = {"pointodyssey": 0.15, "dynamic_replica": 0.23, "kubric": 0.10, "spring": 0.10, "co3d": 0.21,
                 "waymo": 0.21}


def _check_weight(name: str, weight: Any) -> None:
    """ValueError naming component `name` unless `weight` is a finite number > 0."""
    ok = isinstance(weight, (int, float, np.number)) and not isinstance(weight, bool)
    if not (ok and np.isfinite(weight) and weight > 0):
        raise ValueError(f"weights: component {name!r} has weight {weight!r}; expected a finite number > 0")


class MixtureDataset(Dataset):
    """`samples_per_epoch` clips drawn from `datasets` with probabilities `weights` (normalised).

    Index k (an int, or a clip key `(k, num_frames, aspect_ratio, epoch)` that is forwarded to the component
    with k replaced by the component's index) -> the component's sample dict, unchanged. `set_epoch` redraws
    the mapping and is forwarded to the components that have one; a key's epoch overrides it.
    """

    accepts_clip_keys = True  # takes (k, num_frames, aspect_ratio, epoch) keys

    def __init__(
        self,
        datasets: Sequence[Dataset],
        weights: Sequence[float],
        samples_per_epoch: int,
        seed: int = 0,
        names: Sequence[str] | None = None,
    ) -> None:
        names = list(names) if names is not None else [type(d).__name__ for d in datasets]
        if len(datasets) == 0:
            raise ValueError("datasets: expected at least one component, got none")
        if len(weights) != len(datasets) or len(names) != len(datasets):
            raise ValueError(f"weights / names: expected {len(datasets)} entries (one per dataset), "
                             f"got {len(weights)} weights and {len(names)} names")
        for name, w, ds in zip(names, weights, datasets):
            _check_weight(name, w)
            if len(ds) == 0:
                raise ValueError(f"datasets: component {name!r} is empty (len 0)")
        if samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch: expected >= 1, got {samples_per_epoch}")
        self.datasets = list(datasets)
        self.names = names
        total = float(sum(weights))
        self.weights = np.array([w / total for w in weights], dtype=np.float64)
        self.samples_per_epoch = int(samples_per_epoch)
        self.seed = seed
        self.epoch = 0
        self._table: tuple[int, np.ndarray, np.ndarray] | None = None  # (epoch, component (K,), index (K,))

    def __len__(self) -> int:
        return self.samples_per_epoch

    def set_epoch(self, epoch: int) -> None:
        """New draws for `epoch`; forwarded to every component that has `set_epoch`."""
        self.epoch = epoch
        for ds in self.datasets:
            if hasattr(ds, "set_epoch"):
                ds.set_epoch(epoch)

    def _draws(self, epoch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(component (K,), component index (K,)) of `epoch` (default: the current one), K = samples_per_epoch;
        cached per epoch."""
        epoch = self.epoch if epoch is None else epoch
        if self._table is None or self._table[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            component = rng.choice(len(self.datasets), size=self.samples_per_epoch, p=self.weights)
            index = np.empty(self.samples_per_epoch, dtype=np.int64)
            for c, ds in enumerate(self.datasets):
                slots = np.nonzero(component == c)[0]
                perm = rng.permutation(len(ds))
                # the j-th draw of component c takes its j-th clip of the permutation (wrapping around)
                index[slots] = perm[np.arange(slots.size) % perm.size]
            self._table = (epoch, component, index)
        return self._table[1], self._table[2]

    def locate(self, k: int, epoch: int | None = None) -> tuple[int, int]:
        """(component position, index inside that component) of mixture index k in `epoch` (default: current)."""
        if not -self.samples_per_epoch <= k < self.samples_per_epoch:
            raise IndexError(f"index {k} out of range for a mixture of {self.samples_per_epoch} samples per epoch")
        component, index = self._draws(epoch)
        return int(component[k]), int(index[k])

    def shares(self) -> dict[str, float]:
        """Component name -> fraction of this epoch's samples drawn from it."""
        component, _ = self._draws()
        counts = np.bincount(component, minlength=len(self.datasets))
        return {name: float(n) / self.samples_per_epoch for name, n in zip(self.names, counts)}

    def __getitem__(self, key: int | tuple) -> Any:
        """Mixture index k, or a clip key `(k, num_frames, aspect_ratio, epoch)` (`datamodules.sampling`): the
        key's epoch (which reaches DataLoader workers, unlike `set_epoch`) picks the draws; the child gets
        the same key with its own index (a plain int when it does not take keys)."""
        k, num_frames, aspect, epoch = parse_clip_key(key)
        c, i = self.locate(k, epoch)
        child = self.datasets[c]
        if isinstance(key, int) or not getattr(child, "accepts_clip_keys", False):
            return child[i]
        return child[(i, num_frames, aspect, epoch)]


@register_dataset("mixture")
class ConfiguredMixtureDataset(MixtureDataset):
    """The mixture as a registered dataset: built from `components` the way an experiment YAML states it.

    Args:
        root: unused (each component names its own `root`); kept for the common dataset signature.
        num_frames, image_size, normalize: passed to every component.
        components: label -> {weight, root, [dataset: registry name (default: the label)], **kwargs}.
        samples_per_epoch: clips per epoch (the epoch length the DataLoader sees).
        seed: seed of the mixture draws, also passed to every component that does not set its own.
        **shared: keyword arguments for every component (e.g. split, aspect_ratio, augment, num_tracks),
            overridden by a component's own entries.
    """

    def __init__(
        self,
        root: str | None = None,
        num_frames: int = 8,
        image_size: int = 518,
        normalize: bool = True,
        components: dict[str, dict[str, Any]] | None = None,
        samples_per_epoch: int = 10000,
        seed: int = 0,
        **shared: Any,
    ) -> None:
        if not components:
            raise ValueError("components: expected {name: {weight, root, ...}} with at least one entry, got none")
        if root is not None:
            logger.debug("mixture: ignoring root=%s (each component names its own root)", root)
        common = {"num_frames": num_frames, "image_size": image_size, "normalize": normalize, "seed": seed, **shared}
        plans, weights = [], []
        for label, spec in components.items():  # check every entry before building any dataset
            spec = dict(spec or {})
            weight = spec.pop("weight", None)
            _check_weight(label, weight)
            try:
                cls = get_dataset_class(spec.pop("dataset", label))
            except ValueError as err:
                raise ValueError(f"components: {label!r}: {err}") from None
            plans.append((cls, spec))
            weights.append(float(weight))
        datasets = [cls(**{**common, **spec}) for cls, spec in plans]
        super().__init__(datasets, weights, samples_per_epoch, seed=seed, names=list(components))
        logger.info("mixture: %s", ", ".join(f"{n} {w:.3f} ({len(d)} clips)"
                                              for n, w, d in zip(self.names, self.weights, self.datasets)))
