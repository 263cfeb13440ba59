"""load_weights: formats, the documented gaps (mask head, track head), strict errors, no code unpickling."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from page4d_lightning.models import PAGE4D, PAGE4DConfig, load_weights

MASK = "aggregator.spatial_mask_head."
TRACK = "track_head."


def _model(seed: int, enable_track: bool = False) -> PAGE4D:
    torch.manual_seed(seed)
    return PAGE4D(PAGE4DConfig.tiny(enable_track=enable_track))


@pytest.fixture(scope="module")
def source() -> PAGE4D:
    return _model(seed=1, enable_track=True)


@pytest.fixture(scope="module")
def source_state(source) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in source.state_dict().items()}


@pytest.fixture(scope="module")
def plain_state() -> dict[str, torch.Tensor]:
    """A tiny model without track head (cheaper to build) for the format round trips."""
    return {k: v.clone() for k, v in _model(seed=3).state_dict().items()}


def _assert_same(model: torch.nn.Module, state: dict[str, torch.Tensor], skip: str | None = None) -> None:
    own = model.state_dict()
    for key, value in state.items():
        if skip and key.startswith(skip):
            continue
        assert torch.equal(own[key], value), key


def _only(state, prefix=None, without=None):
    return {
        k: v
        for k, v in state.items()
        if (prefix is None or k.startswith(prefix)) and (without is None or not k.startswith(without))
    }


def test_round_trip_plain_pt(tmp_path, plain_state):
    path = tmp_path / "export.pt"
    torch.save(plain_state, path)
    model = _model(seed=2)
    model.set_mask_strength(1.0)
    report = load_weights(model, path)
    _assert_same(model, plain_state)
    assert report.format == "state_dict" and report.loaded == len(plain_state)
    assert report.initialised == [] and report.track_head_from is None
    assert model.mask_strength == 0.0


def test_round_trip_safetensors(tmp_path, plain_state):
    path = tmp_path / "export.safetensors"
    save_file({k: v.contiguous() for k, v in plain_state.items()}, str(path))
    model = _model(seed=2)
    report = load_weights(model, path)
    _assert_same(model, plain_state)
    assert report.format == "safetensors"


def test_round_trip_page4d_checkpoint_with_optimizer_state(tmp_path, plain_state):
    params = [torch.nn.Parameter(v.clone()) for v in list(plain_state.values())[:3]]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    sum(p.sum() for p in params).backward()
    optimizer.step()  # real (tensor) optimizer state
    path = tmp_path / "checkpoint_3.pt"
    torch.save({"model": plain_state, "optimizer": optimizer.state_dict(), "epoch": 3, "steps": 1200}, path)
    model = _model(seed=2)
    report = load_weights(model, path)
    _assert_same(model, plain_state)
    assert report.format == "page4d_checkpoint"


def test_round_trip_lightning_checkpoint(tmp_path, plain_state):
    path = tmp_path / "epoch=0-step=10.ckpt"
    lightning_state = {f"model.{k}": v for k, v in plain_state.items()}
    torch.save(
        {
            "state_dict": lightning_state,
            "epoch": 0,
            "global_step": 10,
            "pytorch-lightning_version": "2.6.0",
            "hyper_parameters": {"preset": "tiny", "trainable": ["aggregator.global_blocks.1[0-9].*"]},
        },
        path,
    )
    model = _model(seed=2)
    report = load_weights(model, path)
    _assert_same(model, plain_state)
    assert report.format == "lightning"


def test_vggt_1b_file_without_mask_head_loads_and_reports(tmp_path, source_state, caplog):
    path = tmp_path / "model.pt"
    torch.save(_only(source_state, without=MASK), path)
    model = _model(seed=2, enable_track=True)
    init_mask = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(MASK)}
    with caplog.at_level(logging.INFO, logger="page4d_lightning.models.weights"):
        report = load_weights(model, path)
    assert sorted(report.initialised) == sorted(init_mask) and len(init_mask) == 6
    _assert_same(model, source_state, skip=MASK)
    _assert_same(model, init_mask)  # mask head untouched
    assert "spatial mask head" in caplog.text


def test_page4d_checkpoint_without_track_head_raises_naming_the_gap(tmp_path, source_state):
    path = tmp_path / "checkpoint_9.pt"
    torch.save({"model": _only(source_state, without=TRACK)}, path)
    with pytest.raises(ValueError, match=r"track_head.*track_head_from"):
        load_weights(_model(seed=2, enable_track=True), path)


def test_page4d_checkpoint_without_track_head_filled_from_vggt_file(tmp_path, source_state):
    ckpt = tmp_path / "checkpoint_9.pt"
    torch.save({"model": _only(source_state, without=TRACK)}, ckpt)
    donor_model = _model(seed=5, enable_track=True)
    donor_track = _only(donor_model.state_dict(), prefix=TRACK)
    vggt = tmp_path / "model.pt"
    torch.save(_only(donor_model.state_dict(), without=MASK), vggt)
    model = _model(seed=2, enable_track=True)
    report = load_weights(model, ckpt, track_head_from=str(vggt))
    _assert_same(model, _only(source_state, without=TRACK))
    _assert_same(model, donor_track)
    assert report.track_head_from == str(vggt) and report.initialised == []


def test_model_without_track_head_ignores_track_weights(tmp_path, source_state):
    path = tmp_path / "model.pt"
    torch.save(source_state, path)
    model = _model(seed=2, enable_track=False)
    report = load_weights(model, path)
    _assert_same(model, _only(source_state, without=TRACK))
    assert report.ignored and all(k.startswith(TRACK) for k in report.ignored)


def test_mismatched_shape_names_key_and_both_shapes(tmp_path, plain_state):
    state = dict(plain_state)
    state["camera_head.embed_pose.weight"] = torch.zeros(7, 9)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"camera_head\.embed_pose\.weight: file \(7, 9\) vs model \(128, 9\)"):
        load_weights(_model(seed=2), path)


def test_missing_and_unexpected_keys_are_named(tmp_path, plain_state):
    state = _only(plain_state, without="camera_head.")
    state["aggregator.extra.weight"] = torch.zeros(3)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"missing \(first: camera_head\.empty_pose_tokens \(1, 1, 9\)") as err:
        load_weights(_model(seed=2), path)
    assert "unexpected (first: aggregator.extra.weight (3,))" in str(err.value)


def test_partial_mask_head_is_not_a_documented_gap(tmp_path, plain_state):
    state = _only(plain_state, without=MASK + "head0.4")
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"spatial_mask_head\.head0\.4\.weight"):
        load_weights(_model(seed=2), path)


class _Payload:
    """Unpickling this would create a marker file (stands in for arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, plain_state):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": plain_state, "payload": _Payload(marker)}, path)
    assert not marker.exists()
    with pytest.raises(ValueError, match="refused"):
        load_weights(_model(seed=2), path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # control: an unsafe load does run the payload
    assert marker.exists()


def test_unrecognised_content_and_missing_file(tmp_path):
    path = tmp_path / "odd.pt"
    torch.save({"weights": [1, 2, 3]}, path)
    with pytest.raises(ValueError, match="not a recognised weights file"):
        load_weights(_model(seed=2), path)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_weights(_model(seed=2), tmp_path / "nope.pt")
