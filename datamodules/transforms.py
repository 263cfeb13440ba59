"""Intrinsics-aware resize / crop and the augmentation recipes of the clip pipeline (`augment`).

Pixel convention (the whole code base): OpenCV, integer coordinates at pixel centres. Resizing an image
of width w to w' maps u -> (u + 0.5) w'/w - 0.5, so the intrinsics become fx' = sx fx, cx' = sx (cx + 0.5)
- 0.5 (same for y); a crop at (x0, y0) subtracts x0, y0 from the principal point (and from track pixels).
Depth and masks are resampled with exact nearest neighbour (never interpolated across invalid zeros);
sparse depth (LiDAR) is re-splatted point by point, keeping the nearest surface on collisions.

Augmentation recipes (`AUGMENT_MODES`; every draw comes from the clip's rng, a function of (seed, epoch, index)):
- "none": centre crop of the smallest cover resize, no colour change.
- "clip": ONE isotropic cover resize with zoom U(1, max_zoom) and a random crop for the whole clip, and one
  colour jitter (0.3/0.3/0.3/0.05 p 0.8, blur p 0.1, grey p 0.05) for the whole clip.
- "official": the official PAGE-4D training recipe (kaichen-z/PAGE4D, `training/data/base_dataset.py:238-281`,
  `dataset_util.py:84-142,175-221`, `training/config/default_dataset_fin.yaml:22-24,33-45`), per frame: a crop
  at the principal point to U(0.8, 1.2) of H and, independently, of W (each capped at 1), an anisotropic resize
  to the output shape + 4 px, a crop at the principal point to the output shape (`ResizeCrop.plan_official`);
  so zoom and pixel aspect vary per frame and fx != fy. Colour: ColorJitter(0.5, 0.5, 0.5, 0.1) p 0.9 and
  grey p 0.05, no blur, the same draw for the whole clip 70 % of the time and one draw per frame otherwise
  (`augmentation.py:27-63`, `composed_dataset.py:125-133`, `cojitter_ratio: 0.3`).

Evaluation geometry `resize: stretch` (`OfficialStretch`): the official evaluation's input, two resamplings composed
(see the class).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

PATCH = 14
AUGMENT_MODES = ("none", "clip", "official")
OFFICIAL_CROP_SCALES = (0.8, 1.2)  # `augs.scales`: crop fraction of H and of W, drawn per frame and axis, capped at 1
OFFICIAL_SAFE_BOUND = 4  # `safe_bound`: the resize targets the output shape + 4 px, then crops it strictly
OFFICIAL_PER_FRAME_JITTER = 0.3  # `cojitter_ratio`: probability of one colour draw per frame instead of per clip


def augment_mode(value: bool | str | None) -> str:
    """The `augment` argument -> one of `AUGMENT_MODES`: false / None -> "none", true -> "clip" (the old boolean)."""
    if value is None or value is False:
        return "none"
    if value is True:
        return "clip"
    if isinstance(value, str) and value.lower() in AUGMENT_MODES:
        return value.lower()
    raise ValueError(f"augment: expected one of {', '.join(AUGMENT_MODES)} (or false = none, true = clip), "
                     f"got {value!r}")


def _pp_start(centre: float, size: int, limit: int) -> int:
    """First index of a `size`-long crop of a `limit`-long axis centred at `centre` (pixel-centre coordinates).

    The official rule `max(0, int(c - size // 2))`, then pushed back inside (`dataset_util.py:104-114`), with
    c = centre + 0.5, the principal point in pixel-area coordinates: a centred principal point ((limit - 1) / 2
    here) then gives the centred crop for even and odd sizes alike.
    """
    return min(max(0, math.floor(centre + 0.5 - size // 2)), limit - size)


def output_size(source_hw: tuple[int, int], image_size: int, aspect_ratio: float | None) -> tuple[int, int]:
    """(H, W) of the network input: W = `image_size`; H a multiple of 14.

    `aspect_ratio` a = H/W gives H = floor(W a / 14) 14 (the official training rule); None keeps the
    source aspect as the official `crop` preprocessing does: H = round(W h / w / 14) 14, at most W.
    """
    if image_size <= 0 or image_size % PATCH:
        raise ValueError(f"image_size: expected a positive multiple of {PATCH}, got {image_size}")
    if aspect_ratio is None:
        h, w = source_hw
        height = min(image_size, round(image_size * h / w / PATCH) * PATCH)
    else:
        if not aspect_ratio > 0:
            raise ValueError(f"aspect_ratio: expected H / W > 0, got {aspect_ratio}")
        height = math.floor(image_size * aspect_ratio / PATCH) * PATCH
    return max(PATCH, height), image_size


def splat_depth(uv: np.ndarray, z: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Sparse depth samples at output pixels uv (N, 2) with values z (N,) -> (H, W) float32, 0 = no sample; each
    sample lands on its nearest pixel, samples outside are dropped, and the nearest surface wins a collision."""
    col, row = np.rint(uv[:, 0]).astype(np.int64), np.rint(uv[:, 1]).astype(np.int64)
    oh, ow = out_hw
    keep = (col >= 0) & (col < ow) & (row >= 0) & (row < oh)
    col, row, z = col[keep], row[keep], z[keep]
    order = np.argsort(-z, kind="stable")  # far first, so the nearest surface is written last
    out = np.zeros(out_hw, dtype=np.float32)
    out[row[order], col[order]] = z[order]
    return out


@dataclass(frozen=True)
class ResizeCrop:
    """Crop a window of a (h, w) image, resize it to `resized_hw`, then crop `out_hw` at `offset_xy` (x0, y0).

    `window` (x, y, h, w) is the part of the source kept before resizing (None: all of it); the resize is
    anisotropic when the per-axis scales `scale_xy` differ. `lanczos` resamples images with Lanczos-4 (the
    official training resize) instead of area (shrinking) / bilinear (enlarging).
    """

    source_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    offset_xy: tuple[int, int]
    out_hw: tuple[int, int]
    window: tuple[int, int, int, int] | None = None
    lanczos: bool = False

    @classmethod
    def plan(
        cls,
        source_hw: tuple[int, int],
        out_hw: tuple[int, int],
        zoom: float = 1.0,
        rng: np.random.Generator | None = None,
    ) -> ResizeCrop:
        """Smallest resize that covers `out_hw` (times `zoom` >= 1), then a centre crop (or a random one with `rng`)."""
        (h, w), (oh, ow) = source_hw, out_hw
        if zoom < 1.0:
            raise ValueError(f"zoom: expected >= 1, got {zoom}")
        scale = max(oh / h, ow / w) * zoom
        new_h, new_w = max(oh, math.ceil(h * scale - 1e-6)), max(ow, math.ceil(w * scale - 1e-6))
        if rng is None:
            x0, y0 = (new_w - ow) // 2, (new_h - oh) // 2
        else:
            x0, y0 = int(rng.integers(0, new_w - ow + 1)), int(rng.integers(0, new_h - oh + 1))
        return cls((h, w), (new_h, new_w), (x0, y0), (oh, ow))

    @classmethod
    def plan_official(
        cls,
        source_hw: tuple[int, int],
        out_hw: tuple[int, int],
        intrinsics: np.ndarray,
        crop_scales_hw: tuple[float, float] = (1.0, 1.0),
        safe_bound: int = OFFICIAL_SAFE_BOUND,
    ) -> ResizeCrop:
        """One frame of the official training geometry (`base_dataset.py:238-281`), for already drawn scales.

        1. crop at the principal point of `intrinsics` to (int(h min(sh, 1)), int(w min(sw, 1))) (truncated as
           the official `astype(np.int32)`); 2. resize that window anisotropically to (H + b, W + b), b =
           `safe_bound` (the official LANCZOS4 / nearest); 3. crop (H, W) at the moved principal point.
        """
        (h, w), (oh, ow) = source_hw, out_hw
        if min(crop_scales_hw) <= 0:
            raise ValueError(f"crop_scales_hw: expected fractions > 0, got {crop_scales_hw}")
        if safe_bound < 0:
            raise ValueError(f"safe_bound: expected >= 0, got {safe_bound}")
        crop_h = max(1, int(h * min(float(crop_scales_hw[0]), 1.0)))
        crop_w = max(1, int(w * min(float(crop_scales_hw[1]), 1.0)))
        cx, cy = float(intrinsics[0, 2]), float(intrinsics[1, 2])
        wx, wy = _pp_start(cx, crop_w, w), _pp_start(cy, crop_h, h)
        new_h, new_w = oh + safe_bound, ow + safe_bound
        sx, sy = new_w / crop_w, new_h / crop_h
        x0 = _pp_start(sx * (cx - wx + 0.5) - 0.5, ow, new_w)  # the principal point after crop + resize
        y0 = _pp_start(sy * (cy - wy + 0.5) - 0.5, oh, new_h)
        return cls((h, w), (new_h, new_w), (x0, y0), (oh, ow), window=(wx, wy, crop_h, crop_w), lanczos=True)

    @property
    def window_xyhw(self) -> tuple[int, int, int, int]:
        """(x, y, h, w) of the source window that is resized (the whole source when `window` is None)."""
        return self.window if self.window is not None else (0, 0, *self.source_hw)

    @property
    def scale_xy(self) -> tuple[float, float]:
        _, _, h, w = self.window_xyhw
        return self.resized_hw[1] / w, self.resized_hw[0] / h

    def _window(self, array: np.ndarray) -> np.ndarray:
        if self.window is None:
            return array
        x, y, h, w = self.window
        return np.ascontiguousarray(array[y : y + h, x : x + w])

    def _crop(self, array: np.ndarray) -> np.ndarray:
        (x0, y0), (oh, ow) = self.offset_xy, self.out_hw
        return np.ascontiguousarray(array[y0 : y0 + oh, x0 : x0 + ow])

    def _check(self, array: np.ndarray, name: str) -> None:
        if tuple(array.shape[:2]) != self.source_hw:
            raise ValueError(f"{name}: expected {self.source_hw} (H, W) like the image, got {tuple(array.shape[:2])}")

    def image(self, image: np.ndarray) -> np.ndarray:
        """(h, w, 3) uint8 -> (H, W, 3) uint8; Lanczos-4 when `lanczos`, else area filter when shrinking and
        bilinear when enlarging."""
        self._check(image, "image")
        new_h, new_w = self.resized_hw
        if self.lanczos:
            interpolation = cv2.INTER_LANCZOS4
        else:
            interpolation = cv2.INTER_AREA if new_w < self.window_xyhw[3] else cv2.INTER_LINEAR
        return self._crop(cv2.resize(self._window(image), (new_w, new_h), interpolation=interpolation))

    def nearest(self, array: np.ndarray, name: str = "map") -> np.ndarray:
        """Dense depth / masks (h, w) -> (H, W) by exact nearest neighbour (bool kept bool)."""
        self._check(array, name)
        new_h, new_w = self.resized_hw
        is_bool = array.dtype == bool
        src = self._window(array.astype(np.uint8) if is_bool else array)
        resized = cv2.resize(src, (new_w, new_h), interpolation=cv2.INTER_NEAREST_EXACT)
        return self._crop(resized.astype(bool) if is_bool else resized)

    def sparse_depth(self, depth: np.ndarray) -> np.ndarray:
        """Sparse z-depth (h, w), 0 = no return -> (H, W): each valid pixel lands on its new pixel; nearest wins."""
        self._check(depth, "depth")
        v, u = np.nonzero(depth > 0)
        wx, wy, wh, ww = self.window_xyhw
        in_window = (u >= wx) & (u < wx + ww) & (v >= wy) & (v < wy + wh)
        v, u = v[in_window], u[in_window]
        z = depth[v, u]
        return splat_depth(self.points(np.stack([u, v], axis=-1).astype(np.float64)), z, self.out_hw)

    def intrinsics(self, K: np.ndarray) -> np.ndarray:
        """(3, 3) pixel K of the source image -> K of the output image."""
        sx, sy = self.scale_xy
        x0, y0 = self.offset_xy
        wx, wy, _, _ = self.window_xyhw
        K = np.array(K, dtype=np.float64, copy=True)
        K[0, :2] *= sx
        K[1, 1] *= sy
        K[0, 2] = sx * (K[0, 2] - wx + 0.5) - 0.5 - x0
        K[1, 2] = sy * (K[1, 2] - wy + 0.5) - 0.5 - y0
        return K

    def points(self, uv: np.ndarray) -> np.ndarray:
        """Pixel coordinates (..., 2) (x = column, y = row) of the source -> of the output image."""
        sx, sy = self.scale_xy
        x0, y0 = self.offset_xy
        wx, wy, _, _ = self.window_xyhw
        out = np.array(uv, dtype=np.float64, copy=True)
        out[..., 0] = sx * (out[..., 0] - wx + 0.5) - 0.5 - x0
        out[..., 1] = sy * (out[..., 1] - wy + 0.5) - 0.5 - y0
        return out

    def inside(self, uv: np.ndarray) -> np.ndarray:
        """(..., 2) output pixels -> bool: inside the output image (pixel areas included)."""
        oh, ow = self.out_hw
        return (uv[..., 0] >= -0.5) & (uv[..., 0] < ow - 0.5) & (uv[..., 1] >= -0.5) & (uv[..., 1] < oh - 0.5)


@dataclass(frozen=True)
class OfficialStretch:
    """The official evaluation's input geometry (`resize: stretch`), two resamplings composed, as its code does them.

    1. `first`: VGGT's `load_and_preprocess_images(mode="crop")` (vggt/utils/load_fn.py): width W = `image_size`,
       H1 = round(h (W / w) / 14) 14, PIL bicubic, then rows centre-cropped to at most W (start (H1 - W) // 2).
    2. `second`: `F.interpolate(mode="bilinear", align_corners=False)` of that to `out_hw` (kaichen-z/PAGE4D
       `eval/eval/video_depth/launch_page.py` `resize_or_crop(..., crop=False)`; 518x518 there).

    Sintel 1024x436 -> 518x224 -> 518x518 (a 2.31x vertical stretch); Bonn / TUM 640x480 -> 518x392 -> 518x518;
    portrait DyCheck 720x960 -> 518x686, rows 84..601 kept -> 518x518 (a crop, not a stretch). Pixel-centre
    resizes compose exactly (u'' = s2 (s1 (u + 0.5)) - 0.5), so for landscape frames the geometry (intrinsics,
    nearest depth) equals ONE resize to `out_hw`; the image differs from one resize only by the double resampling,
    which is reproduced (PIL bicubic to uint8 as the official, then bilinear; the official keeps the bilinear
    output in float, we round it to uint8: <= 1 level apart).
    Depth and masks take, per output pixel, the source pixel nearest to where its centre lands through both steps
    (exact nearest of the composed map, not nearest of nearest); sparse depth is re-splatted through both.
    Same interface as `ResizeCrop` (image, nearest, sparse_depth, intrinsics, points, inside, out_hw).
    """

    first: ResizeCrop
    second: ResizeCrop

    @classmethod
    def plan(cls, source_hw: tuple[int, int], out_hw: tuple[int, int], image_size: int) -> OfficialStretch:
        """The two steps for a (h, w) source, network input `out_hw`, and the width-`image_size` preprocessing."""
        (h, w), width = source_hw, int(image_size)
        height = max(PATCH, round(h * (width / w) / PATCH) * PATCH)  # load_fn.py: the official expression
        kept = min(height, width)
        first = ResizeCrop((h, w), (height, width), (0, (height - kept) // 2), (kept, width))
        return cls(first, ResizeCrop((kept, width), tuple(out_hw), (0, 0), tuple(out_hw)))

    @property
    def source_hw(self) -> tuple[int, int]:
        return self.first.source_hw

    @property
    def out_hw(self) -> tuple[int, int]:
        return self.second.out_hw

    def image(self, image: np.ndarray) -> np.ndarray:
        """(h, w, 3) uint8 -> (H, W, 3) uint8: PIL bicubic to (H1, W), centre rows, then bilinear to `out_hw`."""
        self.first._check(image, "image")
        (height, width), (oh, ow) = self.first.resized_hw, self.out_hw
        resized = np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BICUBIC))
        kept = self.first._crop(resized)
        if kept.shape[:2] == (oh, ow):
            return kept
        return cv2.resize(kept, (ow, oh), interpolation=cv2.INTER_LINEAR)  # = F.interpolate bilinear, no antialias

    def _source_index(self, axis: int) -> np.ndarray:
        """Source row (axis 0) or column (axis 1) nearest to each output pixel centre mapped through both steps."""
        s1 = self.first.resized_hw[axis] / self.first.source_hw[axis]
        s2 = self.second.resized_hw[axis] / self.second.source_hw[axis]
        offset = self.first.offset_xy[1 - axis]  # offset_xy is (x0, y0)
        out = np.arange(self.out_hw[axis], dtype=np.float64)
        index = np.floor(((out + 0.5) / s2 + offset) / s1).astype(np.int64)  # floor(source coordinate + 0.5)
        return np.clip(index, 0, self.first.source_hw[axis] - 1)

    def nearest(self, array: np.ndarray, name: str = "map") -> np.ndarray:
        """Dense depth / masks (h, w) -> (H, W) by exact nearest neighbour of the composed map (bool kept bool)."""
        self.first._check(array, name)
        return np.ascontiguousarray(array[np.ix_(self._source_index(0), self._source_index(1))])

    def sparse_depth(self, depth: np.ndarray) -> np.ndarray:
        """Sparse z-depth (h, w), 0 = no return -> (H, W): each valid pixel lands on its new pixel; nearest wins."""
        self.first._check(depth, "depth")
        v, u = np.nonzero(depth > 0)
        z = depth[v, u]
        middle = self.first.points(np.stack([u, v], axis=-1).astype(np.float64))
        kept = self.first.inside(middle)  # rows cropped away by step 1 are gone
        return splat_depth(self.second.points(middle[kept]), z[kept], self.out_hw)

    def intrinsics(self, K: np.ndarray) -> np.ndarray:
        """(3, 3) pixel K of the source image -> K of the output image (both steps)."""
        return self.second.intrinsics(self.first.intrinsics(K))

    def points(self, uv: np.ndarray) -> np.ndarray:
        """Pixel coordinates (..., 2) (x = column, y = row) of the source -> of the output image."""
        return self.second.points(self.first.points(uv))

    def inside(self, uv: np.ndarray) -> np.ndarray:
        """(..., 2) output pixels -> bool: inside the output image (pixel areas included)."""
        return self.second.inside(uv)


def photometric_augmentation(strength: float = 1.0):
    """Albumentations pipeline applied with ONE set of random parameters to all frames of a clip
    (`transform(images=(S, H, W, 3) uint8)["images"]`): colour jitter, occasional blur and grey."""
    import albumentations as A  # imported here: only training with augmentation needs it

    return A.Compose(
        [
            A.ColorJitter(
                brightness=0.3 * strength, contrast=0.3 * strength, saturation=0.3 * strength, hue=0.05 * strength,
                p=0.8,
            ),
            A.GaussianBlur(blur_limit=(3, 5), p=0.1),
            A.ToGray(p=0.05),
        ]
    )


def official_photometric_augmentation():
    """The official colour pipeline (`augmentation.py:27-63` with `default_dataset_fin.yaml:38-45`): colour jitter
    brightness / contrast / saturation 0.5 and hue 0.1 with p 0.9 (factors U(0.5, 1.5), hue U(-0.1, 0.1), random
    order, as torchvision's ColorJitter), then grey with p 0.05; no blur."""
    import albumentations as A  # imported here: only training with augmentation needs it

    return A.Compose([A.ColorJitter(brightness=0.5, contrast=0.5, saturation=0.5, hue=0.1, p=0.9), A.ToGray(p=0.05)])


class Photometric:
    """The colour augmentation of one recipe ("clip" or "official"), applied to a clip (S, H, W, 3) uint8 with
    draws taken from the clip's rng (so they are a function of (seed, epoch, index))."""

    def __init__(self, mode: str) -> None:
        if mode not in ("clip", "official"):
            raise ValueError(f"augment: photometric recipes are clip and official, got {mode!r}")
        self.mode = mode
        self.transform = official_photometric_augmentation() if mode == "official" else photometric_augmentation()
        self.per_frame_probability = OFFICIAL_PER_FRAME_JITTER if mode == "official" else 0.0

    def __call__(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(S, H, W, 3) uint8 -> same; one parameter set for the clip, or (official, 30 %) one per frame."""
        if self.per_frame_probability and rng.random() < self.per_frame_probability:
            out = []
            for image, seed in zip(images, rng.integers(2**31, size=len(images))):
                self.transform.set_random_seed(int(seed))
                out.append(self.transform(image=image)["image"])
            return np.stack(out)
        self.transform.set_random_seed(int(rng.integers(2**31)))
        return self.transform(images=images)["images"]


def plan_clip_geometry(
    mode: str,
    source_hw: tuple[int, int],
    out_hw: tuple[int, int],
    intrinsics: list[np.ndarray],
    rng: np.random.Generator,
    max_zoom: float = 1.2,
) -> list[ResizeCrop]:
    """One `ResizeCrop` per frame (intrinsics (3, 3) of each source frame) for augmentation `mode`.

    "none": the centre crop of the smallest cover resize; "clip": one zoom U(1, `max_zoom`) and random crop shared
    by all frames; "official": `ResizeCrop.plan_official` per frame with crop scales U(0.8, 1.2) per axis.
    """
    if mode == "official":
        scales = rng.uniform(*OFFICIAL_CROP_SCALES, size=(len(intrinsics), 2))  # (S, 2): H and W fractions
        return [ResizeCrop.plan_official(source_hw, out_hw, K, (s[0], s[1])) for K, s in zip(intrinsics, scales)]
    if mode not in ("none", "clip"):
        raise ValueError(f"augment: expected one of {', '.join(AUGMENT_MODES)}, got {mode!r}")
    zoom = float(rng.uniform(1.0, max_zoom)) if mode == "clip" else 1.0
    plan = ResizeCrop.plan(source_hw, out_hw, zoom, rng if mode == "clip" else None)
    return [plan] * len(intrinsics)
