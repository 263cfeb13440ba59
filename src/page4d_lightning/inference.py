"""Inference on a clip or a long video: one decoded forward, or overlapping windows chained by Sim(3).

    out = predict_clip(model, images)                          # images (S, 3, H, W) in [0, 1]
    out = predict_sequence(model, images, window=16, overlap=8)

Both return float32 tensors on the images' device, per frame (no batch dimension):

- `extrinsics` (S, 3, 4) camera-from-world, OpenCV axes, frame 0 = identity (the model's gauge);
- `intrinsics` (S, 3, 3) in pixels of the network input (principal point at (W/2, H/2), as decoded);
- `depth`, `depth_conf` (S, H, W): z-depth in the model's (scale-free) unit, and its confidence (1 + exp, >= 1);
- `world_points` (S, H, W, 3) in frame 0's camera frame, `world_points_conf` (S, H, W);
- `dynamic_mask` (S, H/14, W/14): the model's per-patch value 0.5 - m in (0, 1), 1 = fully dynamic (its key is
  suppressed in the camera attention), 0.5 = neutral; not thresholded;
- with `query_points` (N, 2) (pixels of frame 0) and a track head: `tracks` (S, N, 2) pixels, `track_vis` and
  `track_conf` (S, N) in [0, 1].

`predict_sequence` with a window runs overlapping windows, each predicted in its own first-frame gauge, and
maps each window into frame 0's world with the Sim(3) fitted (confidence-weighted Umeyama) between its world
points and the already chained ones on the frames they share: extrinsics and world points are transformed, depth
is multiplied by the scale. Every frame is taken from the earliest window that contains it; `window_of_frame`
(S,) says which. Tracks are chained too: window k is queried with the chained track positions of its first
frame. Memory on the device is that of one window (plus the chained outputs).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn

from page4d_lightning.geometry import pose_encoding_to_extri_intri, umeyama_sim3

__all__ = ["apply_sim3", "chain_windows", "decode_predictions", "predict_clip", "predict_sequence", "window_starts"]

PER_FRAME = ("extrinsics", "intrinsics", "depth", "depth_conf", "world_points", "world_points_conf",
             "dynamic_mask", "tracks", "track_vis", "track_conf")
ALIGN_POINTS = 20_000  # overlap points used per window fit (a deterministic strided subsample)


def _check_images(images: Tensor) -> tuple[int, int, int]:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images: expected (S, 3, H, W) in [0, 1], got {tuple(images.shape)}")
    S, _, H, W = images.shape
    return S, H, W


def decode_predictions(predictions: dict, image_hw: tuple[int, int]) -> dict[str, Tensor]:
    """The model's batched outputs (batch of one clip) -> the per-frame dict of the module docstring (float32)."""
    out: dict[str, Tensor] = {}
    if "pose_enc" in predictions:
        out["extrinsics"], out["intrinsics"] = pose_encoding_to_extri_intri(predictions["pose_enc"][0].float(),
                                                                            image_hw)
    if "depth" in predictions:
        out["depth"] = predictions["depth"][0, ..., 0]
        out["depth_conf"] = predictions["depth_conf"][0]
    if "world_points" in predictions:
        out["world_points"] = predictions["world_points"][0]
        out["world_points_conf"] = predictions["world_points_conf"][0]
    if "dynamic_mask" in predictions:
        out["dynamic_mask"] = predictions["dynamic_mask"][0]
    if "track" in predictions:
        out["tracks"] = predictions["track"][0]
        out["track_vis"] = predictions["vis"][0]
        out["track_conf"] = predictions["conf"][0]
    return {k: v.detach().float() for k, v in out.items()}


@torch.no_grad()
def predict_clip(
    model: nn.Module,
    images: Tensor,
    *,
    query_points: Tensor | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, Tensor]:
    """One no-grad forward of `images` (S, 3, H, W) in [0, 1] in eval mode (the model's mode is restored), decoded
    (module docstring). `autocast_dtype` (e.g. torch.bfloat16) runs the forward under torch.autocast on the images'
    device type; the heads disable autocast themselves."""
    _, H, W = _check_images(images)
    if query_points is not None:
        query_points = query_points.to(images.device, torch.float32)
    was_training = model.training
    model.eval()
    autocast = (torch.autocast(device_type=images.device.type, dtype=autocast_dtype)
                if autocast_dtype is not None else contextlib.nullcontext())
    try:
        with autocast:
            predictions = model(images[None], query_points=None if query_points is None else query_points[None])
    finally:
        model.train(was_training)
    return {k: v.to(images.device) for k, v in decode_predictions(predictions, (H, W)).items()}


def window_starts(num_frames: int, window: int, overlap: int) -> list[int]:
    """First frames of the windows: step `window - overlap`, the last window aligned to the end (no frame dropped)."""
    if window < 2:
        raise ValueError(f"window: expected >= 2 frames, got {window}")
    if not 1 <= overlap < window:
        raise ValueError(f"overlap: expected 1 <= overlap < window ({window}) shared frames, got {overlap}")
    if num_frames <= window:
        return [0]
    starts = list(range(0, num_frames - window + 1, window - overlap))
    if starts[-1] != num_frames - window:
        starts.append(num_frames - window)
    return starts


def apply_sim3(pred: dict[str, Tensor], scale: Tensor, R: Tensor, t: Tensor) -> dict[str, Tensor]:
    """Map one window's predictions by X' = scale R X + t: world points moved, extrinsics re-expressed so that each
    camera sees the moved (and scaled) scene the same way, depth multiplied by `scale`; the rest unchanged."""
    out = dict(pred)
    if "world_points" in pred:
        out["world_points"] = scale * pred["world_points"] @ R.T + t
    if "depth" in pred:
        out["depth"] = pred["depth"] * scale
    if "extrinsics" in pred:
        # x_cam = Re X + te, X = R^T (X' - t) / s; camera frame scaled by s: s x_cam = Re R^T X' + s te - Re R^T t
        Re, te = pred["extrinsics"][..., :3], pred["extrinsics"][..., 3]
        R_new = Re @ R.T
        t_new = scale * te - (R_new @ t[:, None])[..., 0]
        out["extrinsics"] = torch.cat([R_new, t_new[..., None]], -1)
    return out


def _fit_window(src: Tensor, src_conf: Tensor, dst: Tensor, dst_conf: Tensor,
                max_points: int) -> tuple[Tensor, Tensor, Tensor]:
    """Sim(3) dst ~ s R src + t from two point maps of the same frames, weighted by min(conf_src, conf_dst)."""
    src, dst = src.reshape(-1, 3).double(), dst.reshape(-1, 3).double()
    weights = torch.minimum(src_conf.reshape(-1), dst_conf.reshape(-1)).double()
    valid = torch.isfinite(src).all(-1) & torch.isfinite(dst).all(-1) & torch.isfinite(weights) & (weights > 0)
    src, dst, weights = src[valid], dst[valid], weights[valid]
    if src.shape[0] < 3:
        raise ValueError("chain_windows: fewer than 3 valid overlap points to align a window")
    stride = max(1, src.shape[0] // max_points)
    scale, R, t = umeyama_sim3(src[::stride], dst[::stride], weights[::stride])
    return scale.float(), R.float(), t.float()


def chain_windows(
    windows: Iterable[dict[str, Tensor]],
    frame_indices: Sequence[Sequence[int] | Tensor],
    *,
    max_points: int = ALIGN_POINTS,
) -> dict[str, Tensor]:
    """Merge window predictions (each per-frame, in its own first-frame gauge and scale) into one sequence in the
    gauge of the first window: window k is aligned to the frames already merged that it contains (Sim(3) on their
    world points, weights min(conf)), and contributes only its new frames. `frame_indices[k]` are window k's frame
    numbers; the union must be 0..S-1 and the first window must hold frame 0. Returns the per-frame dict plus
    `window_of_frame` (S,) long and `window_sim3` (K, 4, 4) (scale R | t of each window)."""
    indices = [torch.as_tensor(f, dtype=torch.long).cpu() for f in frame_indices]
    if not indices:
        raise ValueError("chain_windows: no window")
    num_frames = int(max(int(f.max()) for f in indices)) + 1
    window_of_frame = torch.full((num_frames,), -1, dtype=torch.long)
    sim3 = torch.eye(4).repeat(len(indices), 1, 1)
    merged: dict[str, Tensor] = {}
    count = 0
    for k, (pred, frames) in enumerate(zip(windows, indices, strict=True)):
        count += 1
        if k == 0:
            device = pred["extrinsics"].device
            keys = [key for key in PER_FRAME if key in pred]
            merged = {key: torch.zeros((num_frames, *pred[key].shape[1:]), dtype=pred[key].dtype, device=device)
                      for key in keys}
        if pred["extrinsics"].shape[0] != len(frames):
            raise ValueError(f"chain_windows: window {k} has {pred['extrinsics'].shape[0]} frames, "
                             f"frame_indices {len(frames)}")
        done = window_of_frame[frames] >= 0
        if k == 0:
            if 0 not in frames.tolist():
                raise ValueError("chain_windows: the first window must contain frame 0 (the world gauge)")
        else:
            if not done.any():
                raise ValueError(f"chain_windows: window {k} shares no frame with the earlier windows")
            shared = frames[done].to(device)
            local = done.nonzero()[:, 0].to(device)
            scale, R, t = _fit_window(pred["world_points"][local], pred["world_points_conf"][local],
                                      merged["world_points"][shared], merged["world_points_conf"][shared],
                                      max_points)
            pred = apply_sim3(pred, scale, R, t)
            sim3[k, :3, :3] = scale.cpu() * R.cpu()
            sim3[k, :3, 3] = t.cpu()
        new = ~done
        for key in keys:
            merged[key][frames[new].to(device)] = pred[key][new.to(device)]
        window_of_frame[frames[new]] = k
    if count != len(indices):
        raise ValueError(f"chain_windows: {count} windows for {len(indices)} frame lists")
    if (window_of_frame < 0).any():
        missing = (window_of_frame < 0).nonzero()[:, 0].tolist()
        raise ValueError(f"chain_windows: frames {missing[:10]} are in no window")
    merged["window_of_frame"] = window_of_frame.to(device)
    merged["window_sim3"] = sim3.to(device)
    return merged


def predict_sequence(
    model: nn.Module,
    images: Tensor,
    *,
    window: int | None = None,
    overlap: int = 8,
    autocast_dtype: torch.dtype | None = None,
    query_points: Tensor | None = None,
) -> dict[str, Tensor]:
    """`images` (S, 3, H, W) in [0, 1]. `window` None or >= S: exactly `predict_clip`. Otherwise overlapping windows
    of `window` frames (step `window - overlap`, the last one aligned to the end), chained into frame 0's world by
    `chain_windows` (module docstring); adds `window_of_frame` (S,) and `window_sim3` (K, 4, 4)."""
    S, _, _ = _check_images(images)
    if window is None or window >= S:
        return predict_clip(model, images, query_points=query_points, autocast_dtype=autocast_dtype)
    starts = window_starts(S, window, overlap)
    frame_lists = [list(range(start, start + window)) for start in starts]

    def run_windows() -> Iterator[dict[str, Tensor]]:  # one window's full outputs alive at a time
        merged_tracks: dict[int, Tensor] = {}  # frame -> track positions (N, 2) from the earliest window
        for frames in frame_lists:
            start = frames[0]
            queries = merged_tracks.get(start, query_points) if start > 0 else query_points
            pred = predict_clip(model, images[start : start + window], query_points=queries,
                                autocast_dtype=autocast_dtype)
            for i, f in enumerate(frames):
                if "tracks" in pred:
                    merged_tracks.setdefault(f, pred["tracks"][i])
            yield pred

    return chain_windows(run_windows(), frame_lists)
