"""Packed HDF5 shards: `page4d pack` of a tiny file-backed reader, then clips identical to the raw reader's
(every tensor, with augmentation, strides, shuffled frames, tracks, tuple indices, sparse depth, DataLoader
workers), the index contents, and bad input (truncated shard, missing index, bad source frame)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from datamodules.base import DATASETS, Page4DDataModule, register_dataset
from datamodules.io import ClipFormatError, read_npz
from datamodules.packed import INDEX_NAME, PackedDataset
from datamodules.packed_writer import pack_dataset
from datamodules.sequence import Frame, SequenceDataset, Tracks
from page4d_lightning.cli import main as cli_main

SEQUENCES = {"alpha": (9, (30, 40)), "beta": (6, (36, 28)), "gamma/nested": (4, (30, 40))}
NUM_TRACKS = 12


def _rotation(a: float, b: float) -> np.ndarray:
    ca, sa, cb, sb = np.cos(a), np.sin(a), np.cos(b), np.sin(b)
    return np.array([[ca, -sa, 0], [sa, ca, 0], [0, 0, 1]]) @ np.array([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]])


def write_source(root: Path, seed: int = 0) -> None:
    """Per frame `<seq>/frame_%03d.npz` (image uint8, depth float32 with holes, mask, float32 K, float64 E);
    per sequence `<seq>/tracks.npz` (float32 points with NaN, visible, valid). `beta` frames >= 3 have no mask."""
    rng = np.random.default_rng(seed)
    for seq, (count, (h, w)) in SEQUENCES.items():
        folder = root / seq
        folder.mkdir(parents=True)
        for i in range(count):
            depth = rng.uniform(0.5, 9.0, (h, w)).astype(np.float32)
            depth[rng.random((h, w)) < 0.2] = 0.0
            E = np.concatenate([_rotation(0.05 * i, -0.03 * i), rng.normal(size=(3, 1))], axis=1)
            K = np.array([[40.0 + i, 0, w / 2 - 0.3], [0, 41.0, h / 2 + 0.2], [0, 0, 1]], dtype=np.float32)
            arrays = {"image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "depth": depth, "K": K, "E": E}
            if not (seq == "beta" and i >= 3):
                arrays["mask"] = rng.random((h, w)) < 0.3
            np.savez(folder / f"frame_{i:03d}.npz", **arrays)
        points = rng.uniform(-2, max(h, w) + 2, (count, 40, 2)).astype(np.float32)
        points[rng.random((count, 40)) < 0.05] = np.nan
        np.savez(folder / "tracks.npz", points=points, visible=rng.random((count, 40)) < 0.8,
                 valid=rng.random((count, 40)) < 0.9)


@register_dataset("_packed_test_source")
class TinySource(SequenceDataset):
    """The test's raw reader: the npz layout of `write_source`."""

    name = "tiny_source"

    def find_sequences(self) -> dict[str, int]:
        found = {p.parent.relative_to(self.root).as_posix() for p in self.root.rglob("frame_000.npz")}
        return {s: len(list((self.root / s).glob("frame_*.npz"))) for s in found}

    def load_frame(self, seq: str, index: int) -> Frame:
        path = self.root / seq / f"frame_{index:03d}.npz"
        a = read_npz(path, ("image", "depth", "K", "E"))
        return Frame(a["image"], a["K"], a["E"], a["depth"], a.get("mask"), str(path))

    def load_tracks(self, seq: str, ids: list[int]) -> Tracks | None:
        a = read_npz(self.root / seq / "tracks.npz")
        return Tracks(a["points"][ids], a["visible"][ids], a["valid"][ids])


class SparseSource(TinySource):
    name, is_metric, sparse_depth = "tiny_sparse", False, True


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> tuple[Path, Path]:
    raw = tmp_path_factory.mktemp("raw")
    out = tmp_path_factory.mktemp("packed")
    write_source(raw)
    pack_dataset(TinySource(raw, num_frames=1), out, frames_per_shard=5, compression="lzf")
    return raw, out


def assert_same_sample(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        if isinstance(value, torch.Tensor):
            assert value.dtype == b[key].dtype and torch.equal(value, b[key]), key
        else:
            assert value == b[key], key


TRAINING = {"num_frames": 4, "image_size": 28, "aspect_ratio": [0.5, 1.0], "stride": [1, 2], "augment": True,
            "shuffle_frames": True, "num_tracks": NUM_TRACKS, "clips_per_sequence": 3, "seed": 11}


@pytest.mark.parametrize("normalize", [False, True])
def test_packed_clips_equal_raw_clips(packed, normalize):
    raw_root, out = packed
    raw = TinySource(raw_root, normalize=normalize, **TRAINING)
    pk = DATASETS["packed"](out, normalize=normalize, **TRAINING)
    assert len(raw) == len(pk) == 9
    for epoch in (0, 2):
        raw.set_epoch(epoch)
        pk.set_epoch(epoch)
        for i in range(len(raw)):
            a, b = raw[i], pk[i]
            assert_same_sample(a, b)
        assert "tracks" in a and ("dynamic_masks" in a) == (a["seq_name"] != "beta")
    assert_same_sample(raw[(4, 2, 0.75)], pk[(4, 2, 0.75)])  # tuple index: (clip, S, aspect)
    plain = {"num_frames": 6, "image_size": 14, "normalize": normalize}  # evaluation-style: no augmentation
    assert_same_sample(TinySource(raw_root, **plain)[1], PackedDataset(out, **plain)[1])


def test_sparse_depth_and_flags_come_from_the_index(tmp_path, packed):
    raw_root, _ = packed
    pack_dataset(SparseSource(raw_root, num_frames=1, split="val"), tmp_path, frames_per_shard=4, compression="gzip")
    args = {"num_frames": 3, "image_size": 28, "augment": True, "split": "val", "num_tracks": 5}
    raw, pk = SparseSource(raw_root, **args), PackedDataset(tmp_path, **args)
    assert (pk.name, pk.is_metric, pk.sparse_depth) == ("tiny_sparse", False, True)
    for i in range(len(raw)):
        assert_same_sample(raw[i], pk[i])
    assert pk[0]["dataset"] == "tiny_sparse"


def test_index_layout_and_shards(packed):
    _, out = packed
    index = json.loads((out / "train" / INDEX_NAME).read_text())
    assert (index["dataset"], index["split"], index["is_metric"], index["sparse_depth"]) == ("tiny_source", "train",
                                                                                           True, False)
    assert {s: v["frames"] for s, v in index["sequences"].items()} == {s: c for s, (c, _) in SEQUENCES.items()}
    assert len(index["shards"]) == 4  # 19 frames, 5 per shard
    beta = index["sequences"]["beta"]["runs"]
    assert [r["count"] for r in beta] == [1, 2, 3]  # shard edge after 1 frame, new run when the mask stops
    with h5py.File(out / "train" / beta[0]["shard"], "r") as f:
        g = f[beta[0]["group"]]
        assert g["image"].dtype == np.uint8 and g["image"].chunks == (1, 36, 28, 3)
        assert g["depth"].dtype == np.float32 and g["extrinsics"].dtype == np.float64
        assert g["dynamic_mask"].dtype == bool and g["image"].compression == "lzf"
    with h5py.File(out / "train" / beta[-1]["shard"], "r") as f:
        assert "dynamic_mask" not in f[beta[-1]["group"]]


def test_workers_open_their_own_files_and_agree(packed):
    raw_root, out = packed
    pk = PackedDataset(out, **TRAINING)
    pk[0]  # opens handles in this process
    assert pk._files
    clone = pickle.loads(pickle.dumps(pk))
    assert clone._files == {}
    raw = TinySource(raw_root, **TRAINING)
    loader = DataLoader(pk, batch_size=None, num_workers=2, collate_fn=lambda x: x)
    for i, sample in enumerate(loader):
        assert_same_sample(raw[i], sample)


def test_truncated_shard_and_missing_index_name_the_file(tmp_path, packed):
    raw_root, _ = packed
    pack_dataset(TinySource(raw_root, num_frames=1), tmp_path, frames_per_shard=100)
    shard = tmp_path / "train" / "shard_00000.h5"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    ds = PackedDataset(tmp_path, num_frames=2, image_size=14)
    with pytest.raises(ClipFormatError, match="shard_00000.h5"):
        ds[0]
    assert any("shard_00000.h5" in p for p in ds.validate())
    with pytest.raises(ClipFormatError, match=r"val.*index.json.*\['train'\]"):
        PackedDataset(tmp_path, split="val")
    (tmp_path / "train" / "shard_00000.h5").unlink()
    with pytest.raises(ClipFormatError, match="shard_00000.h5: missing packed shard"):
        PackedDataset(tmp_path)


def test_bad_source_frame_raises_or_skips_its_sequence(tmp_path):
    raw = tmp_path / "raw"
    write_source(raw, seed=3)
    bad = raw / "beta" / "frame_002.npz"
    bad.write_bytes(bad.read_bytes()[:100])
    source = TinySource(raw, num_frames=1)
    with pytest.raises(ClipFormatError, match="frame_002.npz"):
        pack_dataset(source, tmp_path / "a")
    index_path = pack_dataset(source, tmp_path / "b", skip_bad_sequences=True, frames_per_shard=3)
    index = json.loads(index_path.read_text())
    assert sorted(index["sequences"]) == ["alpha", "gamma/nested"]
    assert "frame_002.npz" in index["skipped"]["beta"]
    ds = PackedDataset(tmp_path / "b", num_frames=3, image_size=14, clips_per_sequence=2)
    assert sorted(ds.sequences) == ["alpha", "gamma/nested"]
    ok = TinySource(raw, num_frames=3, image_size=14, clips_per_sequence=2, sequences=["alpha", "gamma/nested"])
    for i in range(len(ds)):
        assert_same_sample(ok[i], ds[i])


def test_pack_cli_and_datamodule(tmp_path, packed):
    raw_root, _ = packed
    args = ["pack", "--dataset", "_packed_test_source", "--root", str(raw_root), "--out", str(tmp_path),
            "--split", "train", "--compression", "gzip", "--frames-per-shard", "8", "--workers", "2"]
    assert cli_main(args) == 0
    assert json.loads((tmp_path / "train" / INDEX_NAME).read_text())["registry_name"] == "_packed_test_source"
    with pytest.raises(FileExistsError, match="overwrite"):
        cli_main(args)
    assert cli_main([*args, "--overwrite"]) == 0
    dm = Page4DDataModule(dataset="packed", root=str(tmp_path), num_frames=3, image_size=28, batch_size=2,
                          train={"augment": True, "num_tracks": 4}, val={"clips_per_sequence": 1})
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].shape[:3] == (2, 3, 3) and batch["tracks"].shape == (2, 3, 4, 2)
    assert batch["dataset"] == ["tiny_source", "tiny_source"]
    assert len(dm.datasets["val"]) == 3
