"""Ray casting and shading for the synthetic dataset (see `datamodules.synthetic`).

Analytic intersections for all rays of a clip: the room's exit distance, ray-box slabs in each box's local
frame and ray-sphere roots; the nearest hit wins. Hits are shaded with solid textures of object-local
coordinates (so textures move with their object) and Lambertian light + ambient.

Layout: per-pixel values are stacked as (S, C, h, w) (frames, components, rows and columns of a pixel window);
per-frame values enter as (S, C) tensors viewed to broadcast against them. Pixel (v, u) of frame s looks along
M_s [x_u, y_v, 1] in any frame of reference (M_s: that frame's rotation from camera s), with
x_u = (u - cx) / fx and y_v = (v - cy) / fy, so the ray parameter is the z-depth, and any quantity linear in
the direction is a column vector plus a row vector (`_separable`: one broadcast add per component, no 3x3
product per pixel). A hit o + t d of primitive-local origin o has texture coordinates C + t E, E separable too.

The room (primitive 0, which every ray leaves) is cast and shaded on whole frames, a few frames at a time
(cache-sized temporaries). Every other primitive is then cast and shaded in one window size for all frames
where it is on screen, each frame's window placed over the pixel rectangle bounding its projection there, and
blended in where it is nearer than what is there (`lerp` with 0/1 weights: exact). Masks are float 0/1:
making and using bool masks (`where`, `masked_fill`) is several times slower on CPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from datamodules.synthetic.scene import SPHERE, Scene

EPS = 1e-4  # metres: smallest ray parameter counted as a hit
_SHIFT = 256.0  # even integer added to texture coordinates: keeps them positive for floor / frac, same pattern
_ROOM_CHUNK = 2  # frames of the room (and of the output points) computed together

Planes = tuple[Tensor, Tensor, Tensor]  # x, y, z components of vectors

_CORNERS = torch.tensor([[x, y, z] for x in (-1.0, 1.0) for y in (-1.0, 1.0) for z in (-1.0, 1.0)])  # (8, 3)
_EDGES = torch.tensor([[a, b] for a in range(8) for b in range(a + 1, 8) if (a ^ b) in (1, 2, 4)])  # (12, 2)


def _per_frame(values: Tensor, like: Tensor) -> Tensor:
    """Per-frame, per-component values (S, C) viewed as (S, C, 1, ...) to broadcast against `like` (S, C', ...)."""
    return values.view(*values.shape, *(1,) * (like.dim() - 2))


def _compare(op: Callable[..., Tensor], a: Tensor, b: Tensor | float) -> Tensor:
    """op(a, b) (a torch comparison, e.g. torch.lt; b broadcasts to a's shape) as float 0/1: faster to make and
    to use than bool."""
    return op(a, b, out=torch.empty_like(a))


def _separable(coef: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """coef[s, c, 0] x_u + coef[s, c, 1] y_v + coef[s, c, 2] -> (S, C, h, w), for coef (S, C, 3) and pixel
    coordinates x (w,), y (h,) shared by all frames or x (S, w), y (S, h) per frame."""
    if x.dim() == 2:
        x, y = x[:, None], y[:, None]  # (S, 1, w), (S, 1, h): broadcast over C
    column = coef[..., 1, None] * y + coef[..., 2, None]  # (S, C, h)
    return column[..., None] + (coef[..., 0, None] * x)[..., None, :]


def _exit_slabs(d: Tensor, o: Tensor, half: Tensor) -> Tensor:
    """Per-axis exit distances max((h_i - o_i) / d_i, (-h_i - o_i) / d_i) (S, 3, ...) of rays o + t d
    (d (S, 3, ...), o (S, 3)) from strictly inside the box +-half (3,) (+inf where d_i = 0); the exit is their
    minimum, through the face of the minimal axis."""
    inv = d.reciprocal()
    t = inv * _per_frame(half - o, d)
    return torch.maximum(t, inv.mul_(_per_frame(-half - o, d)), out=t)


def _slabs(d: Tensor, o: Tensor, half: Tensor) -> tuple[Tensor, Tensor]:
    """Per-axis entry and exit distances (S, 3, ...) of rays o + t d (d (S, 3, ...), o (S, 3)) through the slabs
    |x_i| <= half_i (half (3,)): the box is hit iff max(entry) <= min(exit), through the face of the max entry."""
    inv = (d + 1e-20).reciprocal_()  # an exact 0 (axis-parallel ray) gives huge but finite distances
    t_a = inv * _per_frame(-half - o, d)
    t_b = inv.mul_(_per_frame(half - o, d))
    return torch.minimum(t_a, t_b), torch.maximum(t_a, t_b, out=t_b)


def _sphere_roots(a: Tensor, b: Tensor, cross: Tensor, radius: Tensor) -> tuple[Tensor, Tensor]:
    """Smaller root t = (-b - sqrt(disc)) / a of |o + t d|^2 = r^2, given a = |d|^2, b = o.d and
    cross = |o x d|^2, and the discriminant disc = a r^2 - |o x d|^2 (= b^2 - a (|o|^2 - r^2), without its
    cancellation near the silhouette); no root where disc < 0 (t is then finite garbage)."""
    disc = torch.add(-cross, a, alpha=float(radius) ** 2)
    return (disc.clamp_min(0.0).sqrt_().add_(b)).neg_().div_(a), disc


def _skew(v: Tensor) -> Tensor:
    """Cross-product matrices [v]_x (..., 3, 3) of vectors v (..., 3): [v]_x w = v x w."""
    x, y, z = v.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).unflatten(-1, (3, 3))


class _Constants(NamedTuple):
    """Per-frame constants of a clip's primitives, each in its primitive's frame: fields (S, P, ...), or (S, ...)
    for one primitive after `pick`. NW = NOISE_WAVES."""

    rot: Tensor  # (S, P, 3, 3): R_p^T R_s, the local direction of camera direction d_cam is rot d_cam
    origin: Tensor  # (S, P, 3): the camera centre R_p^T (c_s - c_p)
    cell_start: Tensor  # (S, P, 3): checker cell coordinates origin * checker_freq + checker_offset + _SHIFT
    wave_rate: Tensor  # (S, P, NW, 3): wave phase (cycles) per unit of ray parameter: noise_k rot / 2 pi
    wave_start: Tensor  # (S, P, NW): wave phases (cycles) at the origin, + _SHIFT
    colour: Tensor  # (S, P, 7, 3): `_shade`'s linear map of the normal (as given to it); last row (1 - ambient) l
    colour_bias: Tensor  # (S, P, 7, 1): its constant part (a view)

    def pick(self, frames: slice | Tensor, p: int) -> _Constants:
        """The constants of frames `frames` of primitive p."""
        return _Constants(*(v[frames, p] for v in self))


def _constants(scene: Scene) -> _Constants:
    """The clip's `_Constants`. Box and room normals reach `_shade` pointing along the ray, sphere normals outwards:
    the colour map flips the former."""
    rot_t = scene.rotations.transpose(-1, -2)  # (S, P, 3, 3)
    origin = (rot_t @ (scene.cam_centers[:, None] - scene.centers)[..., None])[..., 0]
    rot = rot_t @ scene.cam_rotations[:, None]
    k = scene.noise_k / (2 * math.pi)  # (P, NW, 3) cycles / m
    wave_start = (k @ origin[..., None])[..., 0] + scene.noise_phase / (2 * math.pi) + _SHIFT
    a, b = scene.color_a, scene.color_b  # (P, 3)
    colours = torch.cat([a, 2 * b - a], dim=-1)  # (P, 6): lerp(a, 2 b - a, 1/2) = b
    gains = colours[..., None] * scene.face_tint.repeat(1, 2, 1)  # (P, 6, 3): colour_c * tint_c
    light = (scene.light_dir @ scene.rotations) * (1 - scene.ambient)  # R_p^T l (1 - ambient), (S, P, 3)
    facing = torch.where(scene.kinds == SPHERE, 1.0, -1.0)[:, None, None]  # (P, 1, 1)
    colour = torch.cat([gains.expand(*light.shape[:2], 6, 3), light[:, :, None]], dim=2) * facing
    bias = torch.cat([colours, colours.new_zeros(len(colours), 1)], dim=-1)[..., None]  # (P, 7, 1)
    return _Constants(rot, origin, origin * scene.checker_freq[:, None] + scene.checker_offset + _SHIFT,
                      k @ rot, wave_start, colour, bias.expand(*colour.shape[:3], 1))


def cast_rays(scene: Scene, origins: Tensor, dirs: Planes) -> tuple[Tensor, Tensor]:
    """Nearest hit of rays origins (S, 3) (inside the room) + t dirs (world planes (S, *R)) over all primitives,
    no culling -> t (S, *R) and primitive id (S, *R) float (exact small integers). With camera-frame directions
    of z = 1, t is the z-depth. The same intersection formulas as `render`."""
    shape = dirs[0].shape
    d_world = torch.stack([d.reshape(len(d), -1) for d in dirs], dim=1)  # (S, 3, N)
    rot_t = scene.rotations.transpose(-1, -2)  # (S, P, 3, 3)
    o_local = (rot_t @ (origins[:, None] - scene.centers)[..., None])[..., 0]  # (S, P, 3)
    t_best = _exit_slabs(rot_t[:, 0] @ d_world, o_local[:, 0], scene.half_sizes[0]).amin(1)  # (S, N)
    prim = torch.zeros_like(t_best)
    for p in range(1, len(scene.kinds)):
        d, o, half = rot_t[:, p] @ d_world, o_local[:, p], scene.half_sizes[p]
        if int(scene.kinds[p]) == SPHERE:
            cross = (_skew(o) @ d).square_().sum(1)
            t, disc = _sphere_roots((d * d).sum(1), (d * o[..., None]).sum(1), cross, half[0])
            hit = (disc >= 0) & (t > EPS)
        else:
            entry, leave = _slabs(d, o, half)
            t = entry.amax(1)
            hit = (t <= leave.amin(1)) & (t > EPS)
        closer = (hit & (t < t_best)).float()
        prim.lerp_(torch.tensor(float(p)), closer)
        t_best.lerp_(t, closer)
    return t_best.view(shape), prim.view(shape)


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


def _frame_windows(rects: Tensor, height: int, width: int) -> list[tuple[list[tuple[int, int, int]], int, int]]:
    """Per primitive, given the pixel rectangles (S, P, 4) [v0, v1, u0, u1] of all: one window size (h, w) holding
    each of its rectangles, and for each frame where it is on screen, (frame, v, u): the window's top-left
    corner, the rectangle's moved back inside the image if needed."""
    size = (rects[..., [1, 3]] - rects[..., [0, 2]]).clamp_min(0)  # (S, P, 2): rows, columns
    on_screen = (size > 0).all(-1)  # (S, P)
    window = (size * on_screen[..., None]).amax(0)  # (P, 2)
    corners = torch.minimum(rects[..., [0, 2]], torch.tensor([height, width]) - window)  # (S, P, 2)
    return [([(s, v, u) for s, (on, (v, u)) in enumerate(zip(on_p, corners_p)) if on], h, w)
            for on_p, corners_p, (h, w) in zip(on_screen.T.tolist(), corners.transpose(0, 1).tolist(), window.tolist())]


def _texture_coords(c: _Constants, freq: float, t: Tensor, d: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Texture coordinates of hits origin + t d on a primitive (constants c of its frames, checker frequency freq,
    t (S, 1, h, w), local directions d (S, 3, h, w) = c.rot [x, y, 1]) -> checker cells (S, 3, h, w)
    x_i freq + offset_i and wave phases in cycles (S, NW, h, w) (noise_k . x + noise_phase) / 2 pi, both
    shifted by _SHIFT (positive)."""
    cells = torch.addcmul(_per_frame(c.cell_start, d), t, d, value=freq)
    return cells, _separable(c.wave_rate, x, y).mul_(t).add_(_per_frame(c.wave_start, d))


def _shade(c: _Constants, ambient: float, cells: Tensor, waves: Tensor, normal: Tensor,
           out: Tensor | None = None) -> Tensor:
    """Colour (S, 3, h, w) in [0, 1] of hits on a primitive (constants c of its frames): checker of cells
    (S, 3, h, w) between color_a and color_b, times noise 0.6 + 0.4 mean_j wave(2 pi waves[:, j]) with
    wave(phi) = 4 u (1 - u), u = frac(phi / 2 pi) (a cheap parabolic stand-in for sin^2(phi / 2): oriented
    stripes at several scales), times face gain 1 + tint . n, times ambient + (1 - ambient) max(n . l, 0), for
    unit normals n (normal (S, 3, h, w), see `_constants`) and light l in the primitive's frame. Written into
    out (S, 3, h * w) if given. Overwrites cells and waves."""
    S, h, w = len(normal), *normal.shape[2:]
    cells.floor_()
    parity = torch.add(cells[:, 0], cells[:, 1]).add_(cells[:, 2]).mul_(0.5).frac_()  # 0 or 1/2, (S, h, w)
    u = waves.frac_()
    level = u.addcmul_(u, u, value=-1.0).sum(1).mul_(1.6 / u.shape[1]).add_(0.6)  # u (1 - u) in [0, 1/4]
    rows = torch.baddbmm(c.colour_bias, c.colour, normal.view(S, 3, h * w))  # (S, 7, h * w)
    lit = rows[:, 6].clamp_min_(0.0).add_(ambient).mul_(level.view(S, h * w))
    colour = torch.lerp(rows[:, :3], rows[:, 3:6], parity.view(S, 1, h * w), out=out)
    return colour.mul_(lit[:, None]).clamp_(0.0, 1.0).view(S, 3, h, w)


def _face_normals(d: Tensor, slab: Tensor, t: Tensor) -> Tensor:
    """Unit normals sign(d_i) e_i (S, 3, h, w), along the ray, of the box faces hit at t (S, 1, h, w): the axis i
    whose slab distance (S, 3, h, w) equals t. Overwrites d."""
    return d.sign_().mul_(_compare(torch.eq, slab, t))


def _render_room(scene: Scene, c: _Constants, x: Tensor, y: Tensor, depth: Tensor, images: Tensor) -> None:
    """Cast and shade the room (constants c of some frames) -> its exit depth into depth (S, H, W) and its colours
    into images (S, 3, H, W) (both contiguous)."""
    d = _separable(c.rot, x, y)  # (S, 3, H, W)
    slab = _exit_slabs(d, c.origin, scene.half_sizes[0])
    t = torch.amin(slab, dim=1, out=depth)[:, None]  # (S, 1, H, W), a view of depth
    cells, waves = _texture_coords(c, float(scene.checker_freq[0]), t, d, x, y)
    _shade(c, scene.ambient, cells, waves, _face_normals(d, slab, t), out=images.view(len(images), 3, -1))


def _hit_sphere(c: _Constants, radius: Tensor, x: Tensor, y: Tensor, depth: Tensor) -> tuple[Tensor, Tensor]:
    """First hit of a window's rays (constants c of some frames, x (S, w), y (S, h)) with a sphere of radius `radius`
    -> t (S, 1, h, w) (finite garbage where missed) and weight (S, 1, h, w): 1.0 where it is hit nearer than
    depth (S, 1, h, w), else 0.0."""
    a = (y * y + 1.0)[:, None, :, None] + (x * x)[:, None, None]  # |d|^2 = |[x, y, 1]|^2 (rotation-invariant)
    cross = _separable(_skew(c.origin) @ c.rot, x, y).square_().sum(1, keepdim=True)  # |o x d|^2, (S, 1, h, w)
    t, disc = _sphere_roots(a, _separable(c.origin[:, None] @ c.rot, x, y), cross, radius)
    weight = _compare(torch.ge, disc, 0.0).mul_(_compare(torch.gt, t, EPS))
    return t, weight.mul_(_compare(torch.lt, t, depth))


def _hit_box(d: Tensor, o: Tensor, half: Tensor, depth: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """First hit of rays o + t d (local directions d (S, 3, h, w), origins o (S, 3)) with the box +-half (3,)
    -> t (S, 1, h, w) (finite garbage where missed), weight (S, 1, h, w): 1.0 where it is hit nearer than depth
    (S, 1, h, w), else 0.0, and the per-axis entry distances (S, 3, h, w) (the face hit is the axis of t)."""
    entry, leave = _slabs(d, o, half)
    t = entry.amax(1, keepdim=True)
    weight = _compare(torch.le, t, leave.amin(1, keepdim=True)).mul_(_compare(torch.gt, t, EPS))
    return t, weight.mul_(_compare(torch.lt, t, depth)), entry


def _primitive_layer(scene: Scene, p: int, c: _Constants, x: Tensor, y: Tensor,
                     depth: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Cast and shade primitive p (constants c of some frames) in their windows (pixel coordinates x (S, w),
    y (S, h)) -> colours (S, 3, h, w), ray parameter t (S, 1, h, w) and weight (S, 1, h, w): 1.0 where it is
    the nearest hit so far (nearer than depth (S, 1, h, w)), else 0.0."""
    d = _separable(c.rot, x, y)  # (S, 3, h, w)
    freq = float(scene.checker_freq[p])
    if int(scene.kinds[p]) == SPHERE:
        radius = scene.half_sizes[p, 0]
        t, weight = _hit_sphere(c, radius, x, y, depth)
        normal = torch.addcmul(_per_frame(c.origin / radius, d), t, d, value=1.0 / float(radius))  # (o + t d) / r
        cells, waves = _texture_coords(c, freq, t, d, x, y)
    else:
        t, weight, entry = _hit_box(d, c.origin, scene.half_sizes[p], depth)
        cells, waves = _texture_coords(c, freq, t, d, x, y)
        normal = _face_normals(d, entry, t)
    return _shade(c, scene.ambient, cells, waves, normal), t, weight


def _render_primitive(scene: Scene, p: int, c: _Constants, windows: list[tuple[int, int, int]], h: int, w: int,
                      x: Tensor, y: Tensor, depth: Tensor, prim: Tensor, images: Tensor) -> None:
    """Cast and shade primitive p (constants c) in its windows (see `_frame_windows`: (frame, v, u) corners, size
    (h, w)) and blend it into depth (S, H, W), prim (S, H, W) float and images (S, 3, H, W) where it is the
    nearest hit so far; x (W,), y (H,): pixel coordinates."""
    frames, v0, u0 = torch.tensor(windows).T  # (S',) each
    views = [(s, slice(v, v + h), slice(u, u + w)) for s, v, u in windows]
    colour, t, weight = _primitive_layer(scene, p, c.pick(frames, p), x[u0[:, None] + torch.arange(w)],
                                         y[v0[:, None] + torch.arange(h)],
                                         torch.stack([depth[view] for view in views])[:, None])
    p_value = torch.tensor(float(p))
    for i, (s, rows, cols) in enumerate(views):
        images[s, :, rows, cols].lerp_(colour[i], weight[i])
        depth[s, rows, cols].lerp_(t[i, 0], weight[i, 0])
        prim[s, rows, cols].lerp_(p_value, weight[i, 0])


def _points(rotations: Tensor, centres: Tensor, depth: Tensor, x: Tensor, y: Tensor, world: Tensor,
            cam: Tensor) -> None:
    """World points c + z R [x, y, 1] into world (S, H, W, 3) and camera points z [x, y, 1] into cam (S, H, W, 3)
    for camera poses rotations (S, 3, 3), centres (S, 3) and depth z (S, H, W)."""
    planes = _separable(rotations, x, y).mul_(depth[:, None]).add_(_per_frame(centres, depth[:, None]))
    torch.stack(planes.unbind(1), dim=-1, out=world)
    torch.mul(depth, x, out=cam[..., 0])
    torch.mul(depth, y[:, None], out=cam[..., 1])
    cam[..., 2] = depth


def _output_tensors(S: int, H: int, W: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Uninitialised images (S, 3, H, W), depths (S, H, W), world and camera points (S, H, W, 3): contiguous views
    of one allocation. Freed together, it raises glibc's dynamic mmap threshold above itself, so that later clips
    reuse that memory; separate multi-MB tensors go back to the OS and are page-faulted in again every clip."""
    planes = S * H * W
    images, depth, world, cam = torch.empty(10 * planes).split([3 * planes, planes, 3 * planes, 3 * planes])
    return images.view(S, 3, H, W), depth.view(S, H, W), world.view(S, H, W, 3), cam.view(S, H, W, 3)


def _chunks(count: int, size: int) -> list[slice]:
    """Consecutive slices of at most `size` covering range(count)."""
    return [slice(start, start + size) for start in range(0, count, size)]


def render(
    scene: Scene, intrinsics: Tensor, height: int, width: int, cameras: tuple[Tensor, Tensor] | None = None
) -> dict[str, Tensor]:
    """Ray-cast and shade all S frames -> images (S,3,H,W) in [0,1], depths (S,H,W) z metres, world_points and
    cam_points (S,H,W,3), dynamic_masks (S,H,W) bool, prim (S,H,W) float (id of the primitive seen at each pixel,
    exact small integers). World points are c_s + z R_s K^-1 [u, v, 1] for the camera poses `cameras`: the
    scene's camera path expressed in the frame wanted for them, as world-from-camera rotations (S, 3, 3) and
    centres (S, 3) (default: the scene's own, i.e. the world frame)."""
    S, H, W = len(scene.cam_centers), height, width
    fx, fy, cx, cy = intrinsics[0, 0], intrinsics[1, 1], intrinsics[0, 2], intrinsics[1, 2]
    x, y = (torch.arange(W) - cx) / fx, (torch.arange(H) - cy) / fy  # K^-1 [u, v, 1] = [x_u, y_v, 1]
    rotations, centres = cameras if cameras is not None else (scene.cam_rotations, scene.cam_centers)
    constants, rects = _constants(scene), screen_rects(scene, intrinsics, H, W)
    images, depth, world, cam = _output_tensors(S, H, W)
    prim = torch.zeros(S, H, W)
    for f in _chunks(S, _ROOM_CHUNK):
        _render_room(scene, constants.pick(f, 0), x, y, depth[f], images[f])
    for p, (windows, h, w) in enumerate(_frame_windows(rects, H, W)):
        if p > 0 and windows:
            _render_primitive(scene, p, constants, windows, h, w, x, y, depth, prim, images)
    for f in _chunks(S, _ROOM_CHUNK):
        _points(rotations[f], centres[f], depth[f], x, y, world[f], cam[f])
    first_dynamic = int(scene.dynamic.long().argmax()) if bool(scene.dynamic.any()) else len(scene.kinds)
    return {
        "images": images,
        "depths": depth,
        "world_points": world,
        "cam_points": cam,
        "dynamic_masks": prim >= first_dynamic,  # moving primitives come last
        "prim": prim,
    }


def intrinsics_for(fov_x: float, height: int, width: int) -> Tensor:
    """Pinhole K (3, 3) in pixels: square pixels, horizontal FoV fov_x radians, principal point (W/2, H/2)."""
    focal = (width / 2) / math.tan(fov_x / 2)
    return torch.tensor([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]])
