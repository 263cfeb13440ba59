"""Ray casting and shading for the synthetic dataset (see `datamodules.synthetic`).

Analytic intersections for all rays of a clip at once: the room's exit distance, ray-box slabs in each box's
local frame and ray-sphere roots; the nearest hit wins. Hits are shaded with solid textures of object-local
coordinates (so textures move with their object) and Lambertian light + ambient. Vectors are handled as
component planes (x, y, z tensors of one shape: no small matrix products per pixel); per-primitive values
enter as tensors that broadcast against them (0-dim, or (S, 1, ...) per frame). Every primitive but the room
is only tested inside the pixel rectangle that bounds its projection in the clip.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from datamodules.synthetic_scene import ROOM, SPHERE, Scene

EPS = 1e-4  # metres: smallest ray parameter counted as a hit
_MISS = 1e9  # ray parameter standing for "no hit" (finite, so that arithmetic blends stay exact)

Planes = tuple[Tensor, Tensor, Tensor]  # x, y, z components of vectors

_CORNERS = torch.tensor([[x, y, z] for x in (-1.0, 1.0) for y in (-1.0, 1.0) for z in (-1.0, 1.0)])  # (8, 3)
_EDGES = torch.tensor([[a, b] for a in range(8) for b in range(a + 1, 8) if (a ^ b) in (1, 2, 4)])  # (12, 2)


def _rotate_t(rot: Tensor, v: Planes) -> Planes:
    """R^T v for rotation entries rot (3, 3, *B) (rot[row][col] broadcasts against the planes) and planes v."""
    return tuple(rot[0][i] * v[0] + rot[1][i] * v[1] + rot[2][i] * v[2] for i in range(3))


def _keep(mask: Tensor, t: Tensor) -> Tensor:
    """t where mask, else _MISS (an arithmetic blend: much faster than torch.where on CPU)."""
    keep = mask.float()
    return t * keep + _MISS * (1.0 - keep)


def _hit(kind: int, half: Tensor, o: Tensor, d: Planes) -> Tensor:
    """First hit of rays o + t d with a box or sphere, in its local frame -> t (shape of the planes), _MISS if none.

    half (3,) metres (sphere: radius repeated); o (3, *B) ray origins. Boxes: slab method; spheres: smallest root.
    """
    if kind == SPHERE:
        a = d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
        b = o[0] * d[0] + o[1] * d[1] + o[2] * d[2]
        disc = b * b - a * ((o * o).sum(0) - half[0] * half[0])
        t = (-b - disc.clamp_min(0).sqrt()) / a
        return _keep((disc >= 0) & (t > EPS), t)
    near = far = None
    for o_i, d_i, h_i in zip(o, d, half):
        inv = (d_i + 1e-20).reciprocal_()  # an exact 0 (axis-parallel ray) gives a huge but finite 1/d
        t_lo, t_hi = inv * (-h_i - o_i), inv * (h_i - o_i)
        lo, hi = torch.minimum(t_lo, t_hi), torch.maximum(t_lo, t_hi)
        near = lo if near is None else torch.maximum(near, lo)
        far = hi if far is None else torch.minimum(far, hi)
    return _keep((near <= far) & (near > EPS), near)


def _room_exit(o: Tensor, d: Planes, half: Tensor) -> Tensor:
    """Exit distance of rays o + t d (o (3, *B)) from inside the axis-aligned box +-half (3,):
    min_i (h_i |1/d_i| - o_i / d_i)."""
    t = None
    for o_i, d_i, h_i in zip(o, d, half):
        inv = (d_i + 1e-20).reciprocal_()  # an exact 0 (axis-parallel ray) gives a huge but finite 1/d
        t_i = inv.abs().mul_(h_i).sub_(inv.mul_(o_i))
        t = t_i if t is None else torch.minimum(t, t_i)
    return t


def _local_origins(scene: Scene, origins: Tensor) -> Tensor:
    """Origins (S, 3) world in the frame of every primitive -> (S, P, 3): R^T (o - c)."""
    return ((origins[:, None] - scene.centers)[..., None, :] @ scene.rotations)[..., 0, :]  # row vectors: R^T v


def cast_rays(scene: Scene, origins: Tensor, dirs: Planes) -> tuple[Tensor, Tensor]:
    """Nearest hit of rays origins (S, 3) + t dirs (world planes (S, *R)) over all primitives, no culling
    -> t (S, *R) and primitive id (S, *R) float (exact small integers). With camera-frame directions of
    z = 1, t is the z-depth."""
    S, extra = len(origins), (1,) * (dirs[0].dim() - 1)
    o_local = _local_origins(scene, origins).permute(1, 2, 0).reshape(-1, 3, S, *extra)  # (P, 3, S, 1, ...)
    rotations = scene.rotations.permute(1, 2, 3, 0).reshape(-1, 3, 3, S, *extra)  # (P, 3, 3, S, 1, ...)
    t_best = _room_exit(o_local[0], dirs, scene.half_sizes[0])  # primitive 0 is the axis-aligned room
    prim = torch.zeros_like(t_best)
    for p in range(1, len(scene.kinds)):
        t = _hit(int(scene.kinds[p]), scene.half_sizes[p], o_local[p], _rotate_t(rotations[p], dirs))
        prim.add_((t < t_best).float().mul_(p - prim))
        torch.minimum(t, t_best, out=t_best)
    return t_best, prim


def screen_rects(scene: Scene, intrinsics: Tensor, height: int, width: int) -> Tensor:
    """Half-open pixel rectangles [v0, v1, u0, u1] (S, P, 4) long that contain each primitive's projection
    (empty when v1 <= v0 or u1 <= u0), with a 1-2 px margin. Boxes: bounds of the projected corners of the
    box clipped to z >= 1 cm; spheres: exact tangent bounds per image axis."""
    near = 0.01
    corners = (_CORNERS * scene.half_sizes[:, None]) @ scene.rotations.transpose(-1, -2) + scene.centers[..., None, :]
    corners = (corners - scene.cam_centers[:, None, None]) @ scene.cam_rotations[:, None]  # camera frame (S,P,8,3)
    a, b = corners[..., _EDGES[:, 0], :], corners[..., _EDGES[:, 1], :]  # (S, P, 12, 3) edge ends
    crossing = (a[..., 2] - near) * (b[..., 2] - near) < 0  # edges through the plane z = near
    frac = ((near - a[..., 2]) / (b[..., 2] - a[..., 2] + 1e-12)).clamp(0, 1)[..., None]
    points = torch.cat([corners, a + frac * (b - a)], dim=-2)  # (S, P, 20, 3)
    valid = torch.cat([corners[..., 2] >= near, crossing], dim=-1)
    z = points[..., 2].clamp_min(near)
    box = []
    for axis, f, c in ((1, intrinsics[1, 1], intrinsics[1, 2]), (0, intrinsics[0, 0], intrinsics[0, 2])):
        coord = points[..., axis] / z * f + c
        box += [coord.masked_fill(~valid, math.inf).amin(-1), coord.masked_fill(~valid, -math.inf).amax(-1)]

    radius, centre = scene.half_sizes[:, 0], corners.mean(-2)  # spheres: radius (P,), centre (S, P, 3)
    sphere = []
    for axis, f, c in ((1, intrinsics[1, 1], intrinsics[1, 2]), (0, intrinsics[0, 0], intrinsics[0, 2])):
        # tangents from the camera to the sphere's circle in the yz (xz) plane
        dist = centre[..., [axis, 2]].norm(dim=-1)
        mid = torch.atan2(centre[..., axis], centre[..., 2])
        spread = torch.asin((radius / dist.clamp_min(1e-9)).clamp(max=1.0))
        lo, hi = mid - spread, mid + spread
        unbounded = (dist <= radius) | (lo <= -math.pi / 2) | (hi >= math.pi / 2)
        behind = centre[..., 2] + radius <= 0
        lo = (f * torch.tan(lo.clamp(-1.5707, 1.5707)) + c).masked_fill(unbounded, -math.inf)
        hi = (f * torch.tan(hi.clamp(-1.5707, 1.5707)) + c).masked_fill(unbounded, math.inf)
        sphere += [lo.masked_fill(behind, math.inf), hi.masked_fill(behind, -math.inf)]
    is_sphere = scene.kinds == SPHERE
    bounds = [torch.where(is_sphere, sp, bx) for sp, bx in zip(sphere, box)]
    v0, v1, u0, u1 = [(x.floor() - 1 if i % 2 == 0 else x.ceil() + 2) for i, x in enumerate(bounds)]
    return torch.stack([v0.clamp(0, height), v1.clamp(0, height), u0.clamp(0, width), u1.clamp(0, width)], -1).long()


def _union_windows(rects: Tensor, height: int, width: int) -> list[tuple[slice, slice, slice]]:
    """Per primitive, the (S, rows, columns) window covering its rectangles (S, P, 4) in all frames."""
    empty = (rects[..., 1] <= rects[..., 0]) | (rects[..., 3] <= rects[..., 2])
    big = max(height, width)
    union = torch.stack([rects[..., 0].masked_fill(empty, big).amin(0), rects[..., 1].masked_fill(empty, 0).amax(0),
                         rects[..., 2].masked_fill(empty, big).amin(0), rects[..., 3].masked_fill(empty, 0).amax(0)],
                        dim=-1)  # (P, 4)
    return [(slice(None), slice(v0, max(v0, v1)), slice(u0, max(u0, u1))) for v0, v1, u0, u1 in union.tolist()]


def _shade(scene: Scene, p: int, local: Planes, light: Tensor) -> Planes:
    """Colour (RGB planes in [0, 1]) of hits on primitive p at local coords (planes), light direction (3, *B)
    in the primitive's frame: checker times multi-scale stripes, per-face tint, Lambertian light + ambient."""
    kind, half = int(scene.kinds[p]), scene.half_sizes[p]
    if kind == SPHERE:
        normal = tuple(x / half[0] for x in local)
    else:  # the face is the axis whose bound the hit lies on; room normals point inwards
        ratio = [x.abs().div_(h) for x, h in zip(local, half)]
        on_x = (ratio[0] >= ratio[1]) & (ratio[0] >= ratio[2])
        on_y = ~on_x & (ratio[1] >= ratio[2])
        on_z = ~(on_x | on_y)
        normal = tuple(torch.sign(x).mul_(m) for x, m in zip(local, (on_x, on_y, on_z)))
        if kind == ROOM:
            normal = tuple(n.neg_() for n in normal)
    lambert = (normal[0] * light[0] + normal[1] * light[1] + normal[2] * light[2]).clamp_min_(0.0)

    cells = sum(torch.floor(x * scene.checker_freq[p] + o) for x, o in zip(local, scene.checker_offset[p]))
    parity = cells - 2.0 * torch.floor(cells * 0.5)  # checker colour: 0 or 1
    waves = zip(scene.noise_k[p], scene.noise_phase[p])
    noise = sum(torch.sin(local[0] * k[0] + local[1] * k[1] + local[2] * k[2] + phase) for k, phase in waves)
    level = (noise * (0.2 / scene.noise_k.shape[1]) + 0.8).mul_(scene.ambient + (1 - scene.ambient) * lambert)
    rgb = []
    for a, b, tint in zip(scene.color_a[p], scene.color_b[p], scene.face_tint[p]):
        gain = (normal[0] * tint[0] + normal[1] * tint[1] + normal[2] * tint[2] + 1.0).mul_(level)
        rgb.append((parity * (b - a) + a).mul_(gain).clamp_(0.0, 1.0))
    return tuple(rgb)


def _cast_pixels(
    scene: Scene, dirs: Planes, windows: list[tuple[slice, slice, slice]]
) -> tuple[Tensor, Tensor, Planes]:
    """Nearest hit of the pixel rays (world planes (S, H, W)) -> z-depth (S, H, W), primitive id (S, H, W)
    float and the hit in that primitive's frame (planes (S, H, W); not filled for room pixels)."""
    o_local = _local_origins(scene, scene.cam_centers).permute(1, 2, 0)[..., None, None]  # (P, 3, S, 1, 1)
    rotations = scene.rotations.permute(1, 2, 3, 0)[..., None, None]  # (S, P, 3, 3) -> (P, 3, 3, S, 1, 1)
    depth = _room_exit(o_local[0], dirs, scene.half_sizes[0])  # the room (axis-aligned) is hit by every ray
    prim = torch.zeros_like(depth)  # float ids (exact small integers), updated by blends
    local = tuple(torch.zeros_like(depth) for _ in range(3))
    for p in range(1, len(scene.kinds)):
        win = windows[p]
        if depth[win].numel() == 0:
            continue
        d_local = _rotate_t(rotations[p], tuple(d[win] for d in dirs))
        t = _hit(int(scene.kinds[p]), scene.half_sizes[p], o_local[p], d_local)
        closer = (t < depth[win]).float()
        prim[win].add_(closer * (p - prim[win]))
        torch.minimum(t, depth[win], out=depth[win])
        for plane, o, d in zip(local, o_local[p], d_local):
            plane[win].add_(closer.mul(d.mul_(t).add_(o).sub_(plane[win])))  # blend in o + t d where closer
    return depth, prim, local


def _shade_pixels(
    scene: Scene, world: Planes, prim: Tensor, local: Planes, windows: list[tuple[slice, slice, slice]]
) -> Tensor:
    """Colours of the pixel hits -> images (S, 3, H, W): the room everywhere first, then each other primitive
    on its own pixels. world, local: planes (S, H, W); prim (S, H, W) float ids."""
    S, H, W = prim.shape
    images = torch.empty(S, 3, H, W)
    for s in range(S):  # frame by frame: cache-sized temporaries
        room_local = tuple(w[s] - c for w, c in zip(world, scene.centers[s, 0]))
        for c, plane in enumerate(_shade(scene, 0, room_local, scene.light_dir)):
            images[s, c] = plane
    light_local = (scene.light_dir @ scene.rotations).permute(1, 2, 0)  # R^T l: (S, P, 3) -> (P, 3, S)
    flat_images = images.view(-1)  # flat index of (s, c, v, u): (s * 3 + c) * H * W + v * W + u
    for p in range(1, len(scene.kinds)):
        win = windows[p]
        s_idx, v_idx, u_idx = (prim[win] == p).nonzero(as_tuple=True)
        if s_idx.numel() == 0:
            continue
        pixel = (v_idx + win[1].start) * W + u_idx + win[2].start
        hit = tuple(x.take(s_idx * (H * W) + pixel) for x in local)
        for c, plane in enumerate(_shade(scene, p, hit, light_local[p][:, s_idx])):
            flat_images.index_copy_(0, (s_idx * 3 + c) * (H * W) + pixel, plane)
    return images


def render(scene: Scene, intrinsics: Tensor, height: int, width: int) -> dict[str, Tensor]:
    """Ray-cast and shade all S frames -> images (S,3,H,W) in [0,1], depths (S,H,W) z metres, world_points and
    cam_points (S,H,W,3), dynamic_masks (S,H,W) bool, prim (S,H,W) long (primitive seen at each pixel)."""
    v, u = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                          indexing="ij")
    fx, fy, cx, cy = intrinsics[0, 0], intrinsics[1, 1], intrinsics[0, 2], intrinsics[1, 2]
    d_cam = torch.stack([(u - cx) / fx, (v - cy) / fy, torch.ones_like(u)], dim=-1)  # K^-1 [u, v, 1], (H, W, 3)
    rot_wc = scene.cam_rotations[..., None, None]  # (S, 3, 3) -> (S, 3, 3, 1, 1): per-frame R_wc over (H, W)
    dirs = tuple(rot_wc[:, i, 0] * d_cam[..., 0] + rot_wc[:, i, 1] * d_cam[..., 1] + rot_wc[:, i, 2]
                 for i in range(3))  # world directions R_wc d, planes (S, H, W): the ray parameter is z-depth
    windows = _union_windows(screen_rects(scene, intrinsics, height, width), height, width)
    depth, prim, local = _cast_pixels(scene, dirs, windows)
    world = tuple(d.mul_(depth).add_(o[:, None, None]) for d, o in zip(dirs, scene.cam_centers.T))  # o + t d
    images = _shade_pixels(scene, world, prim, local, windows)
    prim = prim.long()
    first_dynamic = int(scene.dynamic.long().argmax()) if bool(scene.dynamic.any()) else len(scene.kinds)
    return {
        "images": images,
        "depths": depth,
        "world_points": torch.stack(world, dim=-1),
        "cam_points": depth[..., None] * d_cam,
        "dynamic_masks": prim >= first_dynamic,  # moving primitives come last
        "prim": prim,
    }


def intrinsics_for(fov_x: float, height: int, width: int) -> Tensor:
    """Pinhole K (3, 3) in pixels: square pixels, horizontal FoV fov_x radians, principal point (W/2, H/2)."""
    focal = (width / 2) / math.tan(fov_x / 2)
    return torch.tensor([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]])
