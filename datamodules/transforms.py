"""Intrinsics-aware resize / crop and clip-consistent augmentation of raw frames.

Pixel convention (the whole code base): OpenCV, integer coordinates at pixel centres. Resizing an image
of width w to w' maps u -> (u + 0.5) w'/w - 0.5, so the intrinsics become fx' = sx fx, cx' = sx (cx + 0.5)
- 0.5 (same for y); a crop at (x0, y0) subtracts x0, y0 from the principal point (and from track pixels).
Depth and masks are resampled with exact nearest neighbour (never interpolated across invalid zeros);
sparse depth (LiDAR) is re-splatted point by point, keeping the nearest surface on collisions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

PATCH = 14


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


@dataclass(frozen=True)
class ResizeCrop:
    """Resize a (h, w) image to (new_h, new_w) then crop `out_hw` at (x0, y0). Same for every frame of a clip."""

    source_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    offset_xy: tuple[int, int]
    out_hw: tuple[int, int]

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

    @property
    def scale_xy(self) -> tuple[float, float]:
        return self.resized_hw[1] / self.source_hw[1], self.resized_hw[0] / self.source_hw[0]

    def _crop(self, array: np.ndarray) -> np.ndarray:
        (x0, y0), (oh, ow) = self.offset_xy, self.out_hw
        return np.ascontiguousarray(array[y0 : y0 + oh, x0 : x0 + ow])

    def _check(self, array: np.ndarray, name: str) -> None:
        if tuple(array.shape[:2]) != self.source_hw:
            raise ValueError(f"{name}: expected {self.source_hw} (H, W) like the image, got {tuple(array.shape[:2])}")

    def image(self, image: np.ndarray) -> np.ndarray:
        """(h, w, 3) uint8 -> (H, W, 3) uint8; area filter when shrinking, bilinear when enlarging."""
        self._check(image, "image")
        new_h, new_w = self.resized_hw
        shrink = new_w < self.source_hw[1]
        resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        return self._crop(resized)

    def nearest(self, array: np.ndarray, name: str = "map") -> np.ndarray:
        """Dense depth / masks (h, w) -> (H, W) by exact nearest neighbour (bool kept bool)."""
        self._check(array, name)
        new_h, new_w = self.resized_hw
        is_bool = array.dtype == bool
        src = array.astype(np.uint8) if is_bool else array
        resized = cv2.resize(src, (new_w, new_h), interpolation=cv2.INTER_NEAREST_EXACT)
        return self._crop(resized.astype(bool) if is_bool else resized)

    def sparse_depth(self, depth: np.ndarray) -> np.ndarray:
        """Sparse z-depth (h, w), 0 = no return -> (H, W): each valid pixel lands on its new pixel; nearest wins."""
        self._check(depth, "depth")
        v, u = np.nonzero(depth > 0)
        z = depth[v, u]
        uv = self.points(np.stack([u, v], axis=-1).astype(np.float64))
        col, row = np.rint(uv[:, 0]).astype(np.int64), np.rint(uv[:, 1]).astype(np.int64)
        (oh, ow) = self.out_hw
        keep = (col >= 0) & (col < ow) & (row >= 0) & (row < oh)
        col, row, z = col[keep], row[keep], z[keep]
        order = np.argsort(-z, kind="stable")  # far first, so the nearest surface is written last
        out = np.zeros(self.out_hw, dtype=np.float32)
        out[row[order], col[order]] = z[order]
        return out

    def intrinsics(self, K: np.ndarray) -> np.ndarray:
        """(3, 3) pixel K of the source image -> K of the output image."""
        sx, sy = self.scale_xy
        x0, y0 = self.offset_xy
        K = np.array(K, dtype=np.float64, copy=True)
        K[0, :2] *= sx
        K[1, 1] *= sy
        K[0, 2] = sx * (K[0, 2] + 0.5) - 0.5 - x0
        K[1, 2] = sy * (K[1, 2] + 0.5) - 0.5 - y0
        return K

    def points(self, uv: np.ndarray) -> np.ndarray:
        """Pixel coordinates (..., 2) (x = column, y = row) of the source -> of the output image."""
        sx, sy = self.scale_xy
        x0, y0 = self.offset_xy
        out = np.array(uv, dtype=np.float64, copy=True)
        out[..., 0] = sx * (out[..., 0] + 0.5) - 0.5 - x0
        out[..., 1] = sy * (out[..., 1] + 0.5) - 0.5 - y0
        return out

    def inside(self, uv: np.ndarray) -> np.ndarray:
        """(..., 2) output pixels -> bool: inside the output image (pixel areas included)."""
        oh, ow = self.out_hw
        return (uv[..., 0] >= -0.5) & (uv[..., 0] < ow - 0.5) & (uv[..., 1] >= -0.5) & (uv[..., 1] < oh - 0.5)


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
