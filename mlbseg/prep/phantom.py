"""One synthetic T2-weighted prostate MR volume with its gland mask, PROMISE12-like (for demos and tests).

Geometry: in-plane 256–512 pixels over a 130–200 mm field of view, 15–54 axial slices of 2.2–4 mm (all three
ranges adjustable; a small field of view gives a prostate-centred, zoomed acquisition), identity direction,
varied origins. Anatomy in a (z, y, x) array, y growing towards posterior (LPS): body outline with
subcutaneous fat, pelvic muscle, periprostatic fat, obturator muscles, pubic bones, the rectum (with an
endorectal-coil balloon in some cases), the bladder above the base and the seminal vesicles behind it. The
gland is a lobulated, posteriorly indented ellipse whose size grows from the apex and shrinks again at the
base (peak nearer the base), with a tilted axis, a bright peripheral zone, a darker transition zone that
grows towards the base, an anterior stroma and a thin, faint posterolateral capsule.
Acquisition: multiplicative smooth tissue texture, a smooth bias field (plus a coil hot spot), Rician
noise and a scanner gain, stored as int16. Gland contrast against its surroundings is modest on purpose.
Everything is drawn from the ``rng`` given, so one seed gives the same volume, byte for byte. The zone
map (1 peripheral zone, 2 transition zone) and, on request, an ADC-like second channel come with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from mlbseg.prep.resize import resize_slices

PROMISE12_SIZES = (256, 320, 384, 512)
SLICE_THICKNESS_MM = (2.2, 3.0, 3.6, 4.0)
FIELD_OF_VIEW_MM = (130.0, 200.0)


@dataclass(frozen=True)
class Phantom:
    """A volume and its mask as [S, N, N] arrays, with the geometry of :mod:`mlbseg.prep.volumes`."""

    image: np.ndarray  # int16 T2-like intensities
    mask: np.ndarray  # uint8 0/1 gland
    geometry: dict[str, list[float]]
    zones: np.ndarray  # uint8 0 outside, 1 PZ (the peripheral shell, stroma included), 2 TZ (central zone)
    adc: np.ndarray | None = None  # int16 ADC-like intensities (``make_phantom(..., adc=True)``)


@dataclass(frozen=True)
class _Grid:
    x: np.ndarray  # [1, N] column centres in mm from the field-of-view centre (patient left positive)
    y: np.ndarray  # [N, 1] row centres in mm (posterior positive)
    z: np.ndarray  # [S] slice centres in mm from the first slice's edge
    pixel: float
    thickness: float


@dataclass(frozen=True)
class _Gland:
    cx: float  # centre (mm) at mid-gland
    cy: float
    half_lr: float  # semi-axes (mm) at the widest slice
    half_ap: float
    apex: float  # z (mm) of the apex; the base is at apex + length
    length: float
    peak: float  # profile exponent > 1 puts the widest slice nearer the base
    drift: tuple[float, float]  # (x, y) shift (mm) of the centre from apex to base
    lobes: np.ndarray  # [4, 4]: order k, amplitude, phase, phase drift
    notch: float  # posterior indentation by the rectum
    tz: float  # transition-zone size (fraction of the gland)


def _grid(
    rng: np.random.Generator, in_plane: tuple[int, int], slices: tuple[int, int], fov: tuple[float, float]
) -> _Grid:
    sizes = [n for n in PROMISE12_SIZES if in_plane[0] <= n <= in_plane[1]]
    n = int(rng.choice(sizes)) if sizes else int(rng.integers(in_plane[0], in_plane[1] + 1))
    num_slices = int(rng.integers(slices[0], slices[1] + 1))
    pixel = rng.uniform(*fov) / n
    thickness = float(rng.choice(SLICE_THICKNESS_MM))
    centres = (np.arange(n) + 0.5 - n / 2) * pixel
    return _Grid(
        centres[None, :], centres[:, None], (np.arange(num_slices) + 0.5) * thickness, pixel, thickness
    )


def _gland(rng: np.random.Generator, grid: _Grid) -> _Gland:
    extent = grid.z.size * grid.thickness
    length = min(rng.uniform(30.0, 45.0), 0.8 * extent)
    orders = np.arange(2, 6)
    lobes = np.stack(
        [orders, rng.uniform(0, 0.06, 4), rng.uniform(0, 2 * np.pi, 4), rng.uniform(-1.5, 1.5, 4)], 1
    )
    return _Gland(
        cx=rng.uniform(-8, 8),
        cy=rng.uniform(-6, 10),
        half_lr=rng.uniform(16, 26),
        half_ap=rng.uniform(12, 18),
        apex=rng.uniform(0.05 * extent, extent - length - 0.05 * extent),
        length=length,
        peak=rng.uniform(1.2, 1.8),
        drift=(rng.uniform(-3, 3), rng.uniform(-8, 8)),
        lobes=lobes,
        notch=rng.uniform(0.06, 0.16),
        tz=rng.uniform(0.6, 0.85),
    )


def _ellipse(grid: _Grid, cx: float, cy: float, *, ax: float, ay: float) -> np.ndarray:
    return ((grid.x - cx) / ax) ** 2 + ((grid.y - cy) / ay) ** 2 <= 1.0  # [N, N]


def _pelvis(rng: np.random.Generator, grid: _Grid, gland: _Gland) -> tuple[np.ndarray, tuple[float, float]]:
    """The slice-independent anatomy as [N, N] float32 tissue brightness, and the rectum centre (mm)."""
    body_y, body_a, body_b = rng.uniform(-10, 10), rng.uniform(150, 190), rng.uniform(105, 135)
    fat = rng.uniform(12, 28)
    n = grid.x.shape[1]
    tissue = np.full((n, n), 0.03, dtype=np.float32)  # air
    tissue[_ellipse(grid, 0, body_y, ax=body_a, ay=body_b)] = rng.uniform(0.75, 0.9)  # subcutaneous fat
    muscle_mix = _ellipse(grid, 0, body_y, ax=body_a - fat, ay=body_b - fat)
    tissue[muscle_mix] = rng.uniform(0.32, 0.42)  # muscle mix
    cx, cy, a, b = gland.cx, gland.cy, gland.half_lr, gland.half_ap
    periprostatic = _ellipse(grid, cx, cy - 3, ax=a + rng.uniform(10, 16), ay=b + rng.uniform(8, 12))
    tissue[periprostatic] = rng.uniform(0.55, 0.72)  # fat around the gland
    for side in (-1, 1):
        muscle_x, muscle_y = cx + side * (a + rng.uniform(18, 26)), cy + rng.uniform(-4, 6)
        tissue[_ellipse(grid, muscle_x, muscle_y, ax=rng.uniform(6, 10), ay=rng.uniform(20, 28))] = (
            0.28  # obturator
        )
        bone_x, bone_y = cx + side * rng.uniform(7, 11), cy - b - rng.uniform(14, 22)
        tissue[_ellipse(grid, bone_x, bone_y, ax=10, ay=13)] = 0.08  # cortical rim
        tissue[_ellipse(grid, bone_x, bone_y, ax=8, ay=11)] = rng.uniform(0.4, 0.55)  # marrow
    rectum = (cx + rng.uniform(-3, 3), cy + b + rng.uniform(9, 14))
    rx, ry = rng.uniform(13, 19), rng.uniform(9, 13)
    tissue[_ellipse(grid, *rectum, ax=rx, ay=ry)] = 0.33  # wall
    lumen = 0.04 if rng.random() < 0.4 else rng.uniform(0.1, 0.5)  # coil balloon, or gel/stool
    tissue[_ellipse(grid, *rectum, ax=rx - 3, ay=ry - 3)] = lumen
    return tissue, rectum


def _paint_pelvic_organs(rng: np.random.Generator, tissue: np.ndarray, grid: _Grid, gland: _Gland) -> None:
    """Bladder above the base and seminal vesicles behind it, painted into [S, N, N] ``tissue``."""
    base = gland.apex + gland.length
    radius = rng.uniform(20, 35) * np.sqrt(np.clip((grid.z - base + 3.0) / 20.0, 0.0, 1.0))  # [S] mm
    bladder_y = gland.cy - 0.3 * gland.half_ap - rng.uniform(0, 8)
    reach = np.hypot((grid.x - gland.cx) / 1.25, (grid.y - bladder_y) / 0.9).astype(np.float32)  # [N, N]
    rows = np.nonzero(radius > 1.0)[0]
    for shrink, value in ((0.0, rng.uniform(0.25, 0.35)), (2.0, rng.uniform(0.9, 1.0))):  # wall, then fluid
        inside = reach <= (radius[rows] - shrink).astype(np.float32)[:, None, None]  # [B, N, N]
        tissue[rows] = np.where(inside, np.float32(value), tissue[rows])
    near_base = (grid.z > base - 0.2 * gland.length) & (grid.z < base + rng.uniform(8, 14))
    offset, value = rng.uniform(9, 14), rng.uniform(0.7, 0.85)
    depth = gland.cy + gland.half_ap * rng.uniform(0.4, 0.7)
    vesicles = _ellipse(grid, gland.cx - offset, depth, ax=9, ay=4) | _ellipse(
        grid, gland.cx + offset, depth, ax=9, ay=4
    )
    tissue[near_base] = np.where(vesicles, np.float32(value), tissue[near_base])


def _paint_gland(rng: np.random.Generator, tissue: np.ndarray, grid: _Grid, gland: _Gland) -> np.ndarray:
    """Paint zones and capsule into [S, N, N] ``tissue``; return the [S, N, N] uint8 zone map (1 PZ, 2 TZ)."""
    t = (grid.z - gland.apex) / gland.length
    inside_z = np.nonzero((t > 0) & (t < 1))[0]
    t = t[inside_z][:, None, None]  # [G, 1, 1]
    rows = _span(grid.y[:, 0], gland.cy, gland.half_ap * 1.35 + abs(gland.drift[1]) + 3)
    cols = _span(grid.x[0], gland.cx, gland.half_lr * 1.35 + abs(gland.drift[0]) + 3)
    scale = np.sin(np.pi * t**gland.peak) ** 0.6
    u = (grid.x[:, cols] - gland.cx - gland.drift[0] * (t - 0.5)) / (gland.half_lr * scale)  # [G, 1, w]
    v = (grid.y[rows] - gland.cy - gland.drift[1] * (t - 0.5)) / (gland.half_ap * scale)  # [G, h, 1]
    theta, rho = np.arctan2(v, u), np.hypot(u, v)  # [G, h, w]
    edge = 1.0 - gland.notch * np.exp((np.cos(theta - np.pi / 2) - 1.0) / 0.08)
    for order, amplitude, phase, phase_drift in gland.lobes:
        edge += amplitude * np.cos(order * theta + phase + phase_drift * t)
    width = rng.uniform(0.8, 1.5) / (gland.half_ap * scale)
    capsule = (rho > edge) & (rho <= edge + width) & (v > -0.3 * rho)  # posterolateral only
    transition = ((u / 0.75) ** 2 + ((v + 0.2) / 0.6) ** 2) <= (gland.tz * (0.6 + 0.4 * t)) ** 2
    peripheral, central, stroma = rng.uniform(0.5, 0.68), rng.uniform(0.33, 0.46), rng.uniform(0.25, 0.32)
    zone = np.where(transition, central, np.where(v < -0.75 * edge, stroma, peripheral)).astype(np.float32)
    inside = rho <= edge
    box = (inside_z, rows, cols)
    slab = np.where(capsule, np.float32(rng.uniform(0.3, 0.42)), tissue[box])
    tissue[box] = np.where(inside, zone, slab)
    zones = np.zeros(tissue.shape, dtype=np.uint8)
    zones[box] = np.where(inside, np.where(transition, 2, 1), 0)
    return zones


def _span(centres: np.ndarray, middle: float, half: float) -> slice:
    """The index range of the pixel ``centres`` within ``half`` mm of ``middle``."""
    picked = np.nonzero(np.abs(centres - middle) <= half)[0]
    return slice(int(picked[0]), int(picked[-1]) + 1)


def _texture(rng: np.random.Generator, num_slices: int, size: int, cell: int = 6) -> np.ndarray:
    """[S, N, N] float32 unit-variance tissue texture, correlated over ``cell`` pixels and across slices.

    Two smooth 2-D noise fields mixed per slice as cos(φ)·A + sin(φ)·B, with φ a random walk along z.
    """
    low = rng.standard_normal((2, max(size // cell, 4), max(size // cell, 4)), dtype=np.float32)
    low = ndimage.gaussian_filter(low, sigma=(0.0, 1.0, 1.0))
    fields = resize_slices(low / low.std(axis=(1, 2), keepdims=True), size)  # [2, N, N]
    phase = np.cumsum(rng.normal(0.0, 0.6, num_slices))[:, None, None]
    return np.cos(phase).astype(np.float32) * fields[0] + np.sin(phase).astype(np.float32) * fields[1]


def _acquire(
    rng: np.random.Generator, tissue: np.ndarray, grid: _Grid, rectum: tuple[float, float]
) -> np.ndarray:
    """Texture, bias field, Rician noise and gain: [S, N, N] tissue brightness -> int16 image."""
    signal = _texture(rng, tissue.shape[0], tissue.shape[1])
    signal *= np.float32(rng.uniform(0.06, 0.12))
    signal += np.float32(1.0)
    signal *= tissue
    tilt = rng.uniform(-0.4, 0.4, 3)
    bias = np.exp(tilt[0] * grid.x / 100 + tilt[1] * grid.y / 100 + tilt[2] * (grid.x**2 + grid.y**2) / 1e4)
    if rng.random() < 0.4:  # endorectal coil: bright near the rectum
        spread = rng.uniform(25, 40)
        hot_spot = np.exp(-((grid.x - rectum[0]) ** 2 + (grid.y - rectum[1]) ** 2) / (2 * spread**2))
        bias = bias * (1.0 + rng.uniform(1.0, 2.5) * hot_spot)
    gain = rng.uniform(300, 1800)
    along_z = gain * np.exp(rng.uniform(-0.15, 0.15) * (grid.z - grid.z.mean()) / 50.0)
    signal *= bias.astype(np.float32)
    signal *= along_z.astype(np.float32)[:, None, None]
    sigma = np.float32(gain * rng.uniform(0.015, 0.04))
    signal += sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    noisy = np.hypot(signal, imaginary, out=signal)  # magnitude of complex Gaussian noise: Rician
    np.clip(np.rint(noisy, out=noisy), 0, 32767, out=noisy)
    return noisy.astype(np.int16)


def _adc_tissue(rng: np.random.Generator, tissue: np.ndarray, zones: np.ndarray) -> np.ndarray:
    """[S, N, N] float32 ADC-like brightness: inverted T2 contrast outside the gland, PZ bright, TZ dark.

    Healthy peripheral zone diffuses freely (high ADC), the transition zone less; so the two zones, whose
    T2 contrast differs, differ again in the second channel, in another direction.
    """
    outside = np.where(tissue < 0.05, np.float32(0.03), np.float32(0.95) - np.float32(0.8) * tissue)
    peripheral, central = np.float32(rng.uniform(0.75, 0.9)), np.float32(rng.uniform(0.4, 0.55))
    return np.where(zones == 1, peripheral, np.where(zones == 2, central, outside)).astype(np.float32)


def make_phantom(
    rng: np.random.Generator,
    in_plane: tuple[int, int] = (256, 512),
    slices: tuple[int, int] = (15, 54),
    fov: tuple[float, float] = FIELD_OF_VIEW_MM,
    adc: bool = False,
) -> Phantom:
    """Draw one phantom.

    ``in_plane`` and ``slices`` bound its size (PROMISE12 sizes used when in range), ``fov`` its in-plane
    field of view in mm (the gland is 32–52 mm wide). ``adc`` adds a second, ADC-like channel, drawn after
    everything else, so the T2 image, the masks and the geometry do not depend on it.
    """
    grid = _grid(rng, in_plane, slices, fov)
    gland = _gland(rng, grid)
    plane, rectum = _pelvis(rng, grid, gland)
    tissue = np.repeat(plane[None], grid.z.size, axis=0)  # [S, N, N]
    _paint_pelvic_organs(rng, tissue, grid, gland)
    zones = _paint_gland(rng, tissue, grid, gland)
    mask = (zones > 0).astype(np.uint8)
    image = _acquire(rng, tissue, grid, rectum)
    shift = rng.uniform(-20, 20, 2)
    half = grid.x[0, -1]
    geometry = {
        "spacing": [grid.thickness, grid.pixel, grid.pixel],
        "origin": [float(-half + shift[0]), float(-half + shift[1]), float(rng.uniform(-60, 40))],
        "direction": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
    }
    adc_image = _acquire(rng, _adc_tissue(rng, tissue, zones), grid, rectum) if adc else None
    return Phantom(image, mask, geometry, zones, adc_image)
