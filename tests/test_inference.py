"""inference.py: predict_clip decoding, window layout, and Sim(3) chaining of windows against exact ground truth."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from datamodules import SyntheticDynamicDataset
from page4d_lightning.geometry import extri_intri_to_pose_encoding, se3_compose, se3_inverse
from page4d_lightning.inference import chain_windows, predict_clip, predict_sequence, window_starts
from page4d_lightning.metrics.functional import pose_errors
from page4d_lightning.models import PAGE4D, PAGE4DConfig


class OracleModel(nn.Module):
    """Returns the ground truth of the frames it is shown (their index is written in pixel (0, 0) of channel 0),
    in the gauge of the first frame shown and at a scale that depends on that frame: as a real model would."""

    def __init__(self, sample: dict) -> None:
        super().__init__()
        self.sample = sample

    @staticmethod
    def scale_of(first: int) -> float:
        return 0.5 + 0.37 * first

    def forward(self, images: torch.Tensor, query_points: torch.Tensor | None = None) -> dict:
        frames = torch.round(images[0, :, 0, 0, 0] * 255).long()
        s = self.sample
        first = int(frames[0])
        c = self.scale_of(first)
        E0 = s["extrinsics"][first]
        E = se3_compose(s["extrinsics"][frames], se3_inverse(E0))
        E = torch.cat([E[..., :3], E[..., 3:] * c], -1)
        world = (s["world_points"][frames] @ E0[:, :3].T + E0[:, 3]) * c
        valid = s["point_masks"][frames].float()
        hw = tuple(images.shape[-2:])
        return {
            "pose_enc": extri_intri_to_pose_encoding(E, s["intrinsics"][frames], hw)[None],
            "depth": (s["depths"][frames] * c)[None, ..., None],
            "depth_conf": 1 + valid[None],
            "world_points": world[None],
            "world_points_conf": valid[None] * (1 + torch.rand_like(valid))[None],
            "dynamic_mask": torch.full((1, len(frames), hw[0] // 14, hw[1] // 14), 0.5),
        }


@pytest.fixture(scope="module")
def synthetic_clip():
    sample = SyntheticDynamicDataset(num_frames=20, image_size=56, normalize=False, num_clips=1)[0]
    images = sample["images"].clone()
    images[:, 0, 0, 0] = torch.arange(images.shape[0]) / 255  # the oracle's frame tag
    return sample, images


def test_window_starts_cover_every_frame():
    assert window_starts(64, 16, 8) == [0, 8, 16, 24, 32, 40, 48]
    assert window_starts(20, 8, 3) == [0, 5, 10, 12]  # last window aligned to the end
    assert window_starts(5, 8, 3) == [0]
    with pytest.raises(ValueError, match="overlap"):
        window_starts(20, 8, 8)


def test_windows_chain_to_the_one_shot_trajectory(synthetic_clip):
    sample, images = synthetic_clip
    model = OracleModel(sample)
    one = predict_sequence(model, images)
    chained = predict_sequence(model, images, window=8, overlap=3)
    assert chained["window_of_frame"].tolist() == [0] * 8 + [1] * 5 + [2] * 5 + [3] * 2
    # window k's scale 0.5 + 0.37 start is undone: the chained sequence is window 0's (= the one-shot) gauge
    ate = pose_errors(chained["extrinsics"], one["extrinsics"])["ate"]
    assert float(ate) < 1e-4
    torch.testing.assert_close(chained["extrinsics"], one["extrinsics"], atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(chained["depth"], one["depth"], atol=2e-4, rtol=1e-4)
    valid = sample["point_masks"]
    torch.testing.assert_close(chained["world_points"][valid], one["world_points"][valid], atol=5e-4, rtol=1e-4)
    # and the one-shot depth is the ground truth at the known global scale of frame 0's window
    torch.testing.assert_close(one["depth"], sample["depths"] * OracleModel.scale_of(0))
    scales = chained["window_sim3"][:, :3, :3].det().pow(1 / 3)
    expected = torch.tensor([OracleModel.scale_of(0) / OracleModel.scale_of(s) for s in (0, 5, 10, 12)])
    torch.testing.assert_close(scales, expected, atol=1e-4, rtol=1e-4)


def test_chain_windows_rejects_a_gap(synthetic_clip):
    sample, images = synthetic_clip
    model = OracleModel(sample)
    a, b = predict_clip(model, images[:4]), predict_clip(model, images[6:10])
    with pytest.raises(ValueError, match="shares no frame"):
        chain_windows([a, b], [range(0, 4), range(6, 10)])


def test_tiny_model_window_at_least_s_is_predict_clip():
    torch.manual_seed(0)
    model = PAGE4D(PAGE4DConfig.tiny(enable_track=True)).train()
    images = torch.rand(3, 3, 28, 42)
    query = torch.tensor([[5.0, 7.0], [20.0, 14.0]])
    clip = predict_clip(model, images, query_points=query)
    seq = predict_sequence(model, images, window=3, query_points=query)
    assert model.training  # the mode is restored
    assert clip.keys() == seq.keys()
    for key in clip:
        torch.testing.assert_close(seq[key], clip[key], rtol=0, atol=0)
    assert clip["extrinsics"].shape == (3, 3, 4) and clip["intrinsics"].shape == (3, 3, 3)
    assert clip["depth"].shape == (3, 28, 42) and clip["world_points"].shape == (3, 28, 42, 3)
    assert clip["dynamic_mask"].shape == (3, 2, 3) and clip["tracks"].shape == (3, 2, 2)
    assert all(v.dtype == torch.float32 for v in clip.values())
    windowed = predict_sequence(model, torch.rand(5, 3, 28, 28), window=3, overlap=1, query_points=query)
    assert windowed["depth"].shape == (5, 28, 28) and windowed["tracks"].shape == (5, 2, 2)
