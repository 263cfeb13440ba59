"""MixtureDataset: empirical shares, determinism across instances / workers / ranks, epochs, tuple indices,
errors naming the component, and the YAML form ("mixture" through Page4DDataModule)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import DataLoader, Dataset, DistributedSampler

import datamodules  # noqa: F401  (registers "synthetic")
from datamodules.base import Page4DDataModule
from datamodules.mixture import PAPER_MIXTURE, PAPER_SAMPLE_COUNTS, ConfiguredMixtureDataset, MixtureDataset


class Labelled(Dataset):
    """`size` items; item i = {"source": label, "index": i, "key": the raw index received, "epoch": epoch}."""

    accepts_clip_keys = True

    def __init__(self, label: str, size: int) -> None:
        self.label, self.size, self.epoch = label, size, 0

    def __len__(self) -> int:
        return self.size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, key):
        i = key[0] if isinstance(key, tuple) else key
        if not 0 <= i < self.size:
            raise IndexError(i)
        return {"source": self.label, "index": i, "key": key, "epoch": self.epoch}


class NoEpoch(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i):
        return {"source": "noepoch", "index": i, "key": i}


def _mixture(seed: int = 0, samples: int = 200) -> MixtureDataset:
    parts = [Labelled("a", 10), Labelled("b", 5), Labelled("c", 3)]
    return MixtureDataset(parts, [2.0, 1.0, 1.0], samples_per_epoch=samples, seed=seed, names=["a", "b", "c"])


def _draws(mix: MixtureDataset, ks) -> list[tuple[str, int]]:
    return [(mix[k]["source"], mix[k]["index"]) for k in ks]


def test_paper_mixture_is_the_official_sample_count_share():
    total = sum(PAPER_SAMPLE_COUNTS.values())
    assert total == 48000
    assert math.isclose(sum(PAPER_MIXTURE.values()), 1.0)
    for name, share in PAPER_MIXTURE.items():
        assert abs(share - PAPER_SAMPLE_COUNTS[name] / total) <= 0.005, name


def test_empirical_shares_match_weights_within_binomial_tolerance():
    n = 20000
    mix = _mixture(seed=3, samples=n)
    counts = Counter(mix[k]["source"] for k in range(n))
    for name, p in {"a": 0.5, "b": 0.25, "c": 0.25}.items():
        sigma = math.sqrt(p * (1 - p) / n)
        assert abs(counts[name] / n - p) < 5 * sigma, (name, counts[name] / n)
    assert mix.shares() == pytest.approx({k: v / n for k, v in counts.items()})


def test_each_component_is_covered_before_repeating_within_an_epoch():
    mix = _mixture(seed=1, samples=300)
    per_source: dict[str, list[int]] = {}
    for src, i in _draws(mix, range(300)):
        per_source.setdefault(src, []).append(i)
    for src, size in {"a": 10, "b": 5, "c": 3}.items():
        seen = per_source[src]
        assert sorted(seen[:size]) == list(range(size)), src  # the first `size` draws are a permutation


def test_deterministic_across_instances_and_seeds():
    ks = range(200)
    assert _draws(_mixture(seed=7), ks) == _draws(_mixture(seed=7), ks)
    assert _draws(_mixture(seed=7), ks) != _draws(_mixture(seed=8), ks)


def test_workers_and_ranks_agree_with_the_main_process():
    mix = _mixture(seed=5, samples=40)
    expected = _draws(mix, range(40))
    loader = DataLoader(mix, batch_size=None, num_workers=2, collate_fn=lambda x: x)
    assert [(s["source"], s["index"]) for s in loader] == expected
    # DDP: each rank gets a share of the indices k; whatever rank k lands on, it maps to the same clip
    got = {}
    for rank in range(2):
        sampler = DistributedSampler(mix, num_replicas=2, rank=rank, shuffle=True, seed=0)
        fresh = _mixture(seed=5, samples=40)  # a rank's own copy of the dataset
        for k in sampler:
            got[k] = (fresh[k]["source"], fresh[k]["index"])
    assert sorted(got) == list(range(40))
    assert [got[k] for k in range(40)] == expected


def test_set_epoch_changes_draws_and_reaches_the_children():
    mix = MixtureDataset([Labelled("a", 10), NoEpoch()], [1.0, 1.0], samples_per_epoch=100, seed=0)
    first = _draws(mix, range(100))
    mix.set_epoch(1)
    second = _draws(mix, range(100))
    assert first != second
    assert mix.datasets[0].epoch == 1
    mix.set_epoch(0)
    assert _draws(mix, range(100)) == first  # a pure function of (seed, epoch, k)


def test_tuple_index_is_forwarded_with_the_component_index():
    mix = _mixture(seed=2)
    for k in (0, 17, 99):
        c, i = mix.locate(k)
        out = mix[(k, 3, 0.5)]
        assert out["source"] == "abc"[c]
        assert out["key"] == (i, 3, 0.5, None)
        assert mix[k]["key"] == i
    # the key's epoch (from ClipBatchSampler, it reaches DataLoader workers) picks that epoch's draws
    c, i = mix.locate(5, epoch=4)
    assert mix[(5, 3, 0.5, 4)]["key"] == (i, 3, 0.5, 4) and mix[(5, 3, 0.5, 4)]["source"] == "abc"[c]
    assert [mix.locate(k, epoch=4) for k in range(50)] != [mix.locate(k) for k in range(50)]


def test_bad_arguments_name_the_component():
    parts = [Labelled("a", 3), Labelled("b", 3)]
    with pytest.raises(ValueError, match="'b'.*0.0"):
        MixtureDataset(parts, [1.0, 0.0], 10, names=["a", "b"])
    with pytest.raises(ValueError, match="'a'.*-1"):
        MixtureDataset(parts, [-1, 1.0], 10, names=["a", "b"])
    with pytest.raises(ValueError, match="samples_per_epoch"):
        MixtureDataset(parts, [1.0, 1.0], 0)
    with pytest.raises(IndexError):
        MixtureDataset(parts, [1.0, 1.0], 10)[10]
    with pytest.raises(ValueError, match="'not_a_dataset'.*unknown dataset"):
        ConfiguredMixtureDataset(components={"not_a_dataset": {"weight": 1.0, "root": "/x"}})
    with pytest.raises(ValueError, match="'synthetic'.*weight"):
        ConfiguredMixtureDataset(components={"synthetic": {"num_clips": 2}})
    with pytest.raises(ValueError, match="'b'.*weight"):
        ConfiguredMixtureDataset(components={"a": {"dataset": "synthetic", "weight": 1}, "b": {"dataset": "synthetic",
                                                                                              "weight": 0}})


EXPERIMENT = """
data:
  class_path: datamodules.Page4DDataModule
  init_args:
    dataset: mixture
    num_frames: 2
    image_size: 28
    normalize: true
    batch_size: 2
    train:
      samples_per_epoch: 6
      seed: 0
      num_tracks: 4
      components:
        synthetic: {weight: 0.75, num_clips: 5}
        rooms_b: {dataset: synthetic, weight: 0.25, num_clips: 3, split: val}
"""


def test_yaml_mixture_through_the_datamodule():
    init_args = yaml.safe_load(EXPERIMENT)["data"]["init_args"]
    dm = Page4DDataModule(**init_args)
    dm.setup("fit")
    mix = dm.datasets["train"]
    assert isinstance(mix, ConfiguredMixtureDataset) and len(mix) == 6
    assert mix.names == ["synthetic", "rooms_b"]
    np.testing.assert_allclose(mix.weights, [0.75, 0.25])
    assert mix.datasets[1].split == "val" and mix.datasets[0].num_clips == 5
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].shape == (2, 2, 3, 28, 28)
    assert batch["tracks"].shape == (2, 2, 4, 2)
    assert batch["dataset"] == ["synthetic", "synthetic"]
    c, i = mix.locate(0)
    assert torch.equal(mix[0]["images"], mix.datasets[c][i]["images"])


def test_component_keywords_override_the_shared_ones_and_labelled_splits_work(tmp_path):
    """`stride: [1, 8]` on one component reaches that component only (over the shared `stride`), and a labelled
    component `{dataset: pointodyssey, split: val}` reads the val folder: the official mix trains on PointOdyssey
    train + val + test with stride 1-8 (official_code_facts.md 3.1)."""
    import shutil

    from tests.data.pointodyssey.make_fixture import write_fixture

    write_fixture(tmp_path, num_frames=4)
    shutil.copytree(tmp_path / "train", tmp_path / "val")
    shutil.rmtree(tmp_path / "val" / "cnb_old")  # val differs from train: one sequence
    train = {
        "samples_per_epoch": 4, "split": "train", "stride": [1, 3],
        "components": {
            "pointodyssey": {"weight": 0.5, "root": str(tmp_path), "stride": [1, 8]},
            "po_val": {"dataset": "pointodyssey", "weight": 0.5, "root": str(tmp_path), "split": "val"},
        },
    }
    dm = Page4DDataModule(dataset="mixture", num_frames=2, image_size=28, train=train)
    dm.setup("fit")
    mix = dm.datasets["train"]
    po, po_val = mix.datasets
    assert mix.names == ["pointodyssey", "po_val"]
    assert po.stride_range == (1, 8) and po_val.stride_range == (1, 3)  # own value wins, only there
    assert po.split == "train" and po_val.split == "val"
    assert set(po.sequences) == {"ani_walk", "cnb_old"} and set(po_val.sequences) == {"ani_walk"}
    sample = po_val[0]
    assert sample["dataset"] == "pointodyssey" and sample["seq_name"] == "ani_walk"
    assert sample["images"].shape[:2] == (2, 3)
