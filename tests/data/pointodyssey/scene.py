"""A tiny analytic dynamic scene with exact GT, ray-cast in numpy (shared by the PointOdyssey and Kubric fixtures).

World: Z up, metres. A ground plane z = 0, a wall y = 6 (|x| <= 8, 0 <= z <= 2.5), a static box and a box that
slides along +x, optionally inside a dome (Kubric's finite background); anything else is sky (depth inf).
Cameras are OpenCV (x right, y down, z forward), camera-from-world [R|t], pixel centres at integer
coordinates; the fixtures encode them in each dataset's native convention.
"""

from __future__ import annotations

import numpy as np

SKY, GROUND, WALL, STATIC_BOX, MOVING_BOX, DOME = 0, 1, 2, 3, 4, 5
STATIC_CENTER, STATIC_HALF = np.array([1.3, 2.6, 0.5]), 0.5
MOVING_HALF = 0.45
WALL_Y, WALL_HALF_X, WALL_TOP = 6.0, 8.0, 2.5
_EPS = 1e-9


def moving_center(t: float) -> np.ndarray:
    """Centre (3,) of the sliding box at frame t (0.22 m per frame along +x)."""
    return np.array([-1.3 + 0.22 * t, 1.2, MOVING_HALF])


def look_at(center: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Camera-to-world rotation (3, 3), OpenCV axes, looking from `center` at `target` with world +Z up."""
    z = (target - center) / np.linalg.norm(target - center)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    return np.stack([x, np.cross(z, x), z], axis=1)


def camera_path(num_frames: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Camera centres (T, 3) and camera-to-world rotations (T, 3, 3) of a slow dolly + pan."""
    t = np.arange(num_frames, dtype=np.float64)
    centers = np.stack([-1.0 + shift + 0.25 * t, -5.5 + 0.1 * t, 2.0 + 0.05 * t], axis=1)
    rotations = np.stack([look_at(c, np.array([0.0, 2.0, 0.5])) for c in centers])
    return centers, rotations


def extrinsics(center: np.ndarray, R_c2w: np.ndarray) -> np.ndarray:
    """(3, 4) camera-from-world [R^T | -R^T c]."""
    return np.concatenate([R_c2w.T, -R_c2w.T @ center[:, None]], axis=1)


def _box_hit(o: np.ndarray, d: np.ndarray, center: np.ndarray, half: float) -> np.ndarray:
    """Ray parameter (N,) of the first hit with an axis-aligned cube, inf if none (slab method)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / np.where(np.abs(d) < 1e-15, 1e-15, d)
        a, b = (center - half - o) * inv, (center + half - o) * inv
    near, far = np.minimum(a, b).max(1), np.maximum(a, b).min(1)
    return np.where((near <= far) & (near > _EPS), near, np.inf)


def cast(o: np.ndarray, d: np.ndarray, t: float, dome: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rays o + s d (o, d (N, 3)) at frame t -> first hit parameter s (N,) (inf = sky) and its label (N,)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ground = np.where(d[:, 2] < 0, -o[:, 2] / d[:, 2], np.inf)
        wall = np.where(d[:, 1] > 0, (WALL_Y - o[:, 1]) / d[:, 1], np.inf)
    with np.errstate(invalid="ignore"):
        hit = o + wall[:, None] * d
    wall = np.where((np.abs(hit[:, 0]) <= WALL_HALF_X) & (hit[:, 2] >= 0) & (hit[:, 2] <= WALL_TOP), wall, np.inf)
    candidates = [
        np.where(ground > _EPS, ground, np.inf),
        np.where(wall > _EPS, wall, np.inf),
        _box_hit(o, d, STATIC_CENTER, STATIC_HALF),
        _box_hit(o, d, moving_center(t), MOVING_HALF),
    ]
    labels = [GROUND, WALL, STATIC_BOX, MOVING_BOX]
    if dome is not None:  # far root of |o + s d| = dome
        a, b, c = (d * d).sum(1), (o * d).sum(1), (o * o).sum(1) - dome**2
        candidates.append((-b + np.sqrt(np.maximum(b * b - a * c, 0.0))) / a)
        labels.append(DOME)
    stack = np.stack(candidates)  # (primitives, N)
    first = stack.argmin(0)
    s = stack[first, np.arange(len(first))]
    return s, np.where(np.isfinite(s), np.asarray(labels)[first], SKY)


def render(
    K: np.ndarray, center: np.ndarray, R_c2w: np.ndarray, t: float, hw: tuple[int, int], dome: float | None = None
) -> dict[str, np.ndarray]:
    """Exact maps of frame t: depth (H, W) z (inf = sky), ray_norm (H, W) |ray with z = 1|, world (H, W, 3),
    labels (H, W) and a textured rgb (H, W, 3) uint8. Pixel (u, v) is the ray through OpenCV pixel centre (u, v)."""
    h, w = hw
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1).reshape(-1, 3)
    d = rays @ R_c2w.T  # camera -> world directions, camera z = 1 so s is the z-depth
    s, labels = cast(np.broadcast_to(center, d.shape), d, t, dome)
    with np.errstate(invalid="ignore"):
        world = center + s[:, None] * d
    return {
        "depth": s.reshape(h, w),
        "ray_norm": np.linalg.norm(rays, axis=1).reshape(h, w),
        "world": world.reshape(h, w, 3),
        "labels": labels.reshape(h, w),
        "rgb": _shade(world, labels, t).reshape(h, w, 3),
    }


def _shade(world: np.ndarray, labels: np.ndarray, t: float) -> np.ndarray:
    """Checker textures in object coordinates (so they move with their object) -> (N, 3) uint8."""
    local = world - np.where((labels == MOVING_BOX)[:, None], moving_center(t), 0.0)
    with np.errstate(invalid="ignore"):
        check = (np.floor(np.nan_to_num(local * 4.0, posinf=0, neginf=0)).sum(1) % 2).astype(np.float64)
    base = np.zeros((DOME + 1, 3))
    for label, colour in (
        (SKY, (150, 190, 240)),
        (GROUND, (90, 150, 80)),
        (WALL, (200, 190, 160)),
        (STATIC_BOX, (200, 60, 50)),
        (MOVING_BOX, (50, 80, 210)),
        (DOME, (170, 200, 230)),
    ):
        base[label] = colour
    rgb = base[labels]
    textured = (labels != SKY) & (labels != DOME)
    rgb[textured] *= (0.7 + 0.3 * check[textured])[:, None]
    return rgb.clip(0, 255).astype(np.uint8)


def surface_points(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Points on every surface at frame 0 -> world (N, 3) and label (N,)."""
    ground = np.stack([rng.uniform(-3, 3, 120), rng.uniform(-1, 5, 120), np.zeros(120)], 1)
    wall = np.stack([rng.uniform(-4, 4, 40), np.full(40, WALL_Y), rng.uniform(0.1, 2.4, 40)], 1)
    boxes = [_cube_points(rng, STATIC_CENTER, STATIC_HALF), _cube_points(rng, moving_center(0), MOVING_HALF)]
    points = np.concatenate([ground, wall, *boxes])
    labels = np.repeat([GROUND, WALL, STATIC_BOX, MOVING_BOX], [120, 40, len(boxes[0]), len(boxes[1])])
    return points, labels


def _cube_points(rng: np.random.Generator, center: np.ndarray, half: float, per_face: int = 8) -> np.ndarray:
    faces = []
    for axis in range(3):
        for sign in (-1.0, 1.0):
            p = rng.uniform(-0.9 * half, 0.9 * half, (per_face, 3))
            p[:, axis] = sign * half
            faces.append(center + p)
    return np.concatenate(faces)


def points_at(points: np.ndarray, labels: np.ndarray, t: float) -> np.ndarray:
    """Frame-0 surface points (N, 3) carried to frame t (the sliding box's points ride with it)."""
    return points + np.where((labels == MOVING_BOX)[:, None], moving_center(t) - moving_center(0), 0.0)


def project(points: np.ndarray, K: np.ndarray, E: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World points (N, 3) -> OpenCV pixels (N, 2) and z (N,)."""
    cam = points @ E[:, :3].T + E[:, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = cam[:, :2] / cam[:, 2:] * K[[0, 1], [0, 1]] + K[:2, 2]
    return uv, cam[:, 2]


def visible_points(
    points: np.ndarray,
    center: np.ndarray,
    t: float,
    uv: np.ndarray,
    z: np.ndarray,
    hw: tuple[int, int],
    dome: float | None = None,
) -> np.ndarray:
    """(N,) bool: in front, inside the image and nothing hit before the point along its ray (exact)."""
    s, _ = cast(np.broadcast_to(center, points.shape), points - center, t, dome)
    inside = (uv[:, 0] >= -0.5) & (uv[:, 0] < hw[1] - 0.5) & (uv[:, 1] >= -0.5) & (uv[:, 1] < hw[0] - 0.5)
    return (z > 0.1) & inside & (s >= 1.0 - 1e-6)
