"""Per-volume intensity normalisation of MR images: robust percentile window, then [0, 1].

MR intensities have no physical unit and differ by vendor, coil and case, so every volume is mapped on
its own: take the 0.5th and 99.5th percentiles of **all voxels of the volume** (at original resolution)
as a window, clip to it, and scale the window linearly to [0, 1]. The percentiles ignore the few extreme
voxels (coil hot spots, air spikes) that would squash a min–max scaling, the window is shared by every
slice (so slices keep their relative brightness, unlike the reference's per-slice min–max, docs/reference.md
§6.4 and §7 item 39), and the result lies in the same [0, 1] range as the reference's images. A volume
whose window is empty (constant, or almost) maps to all zeros; constant slices inside a normal volume
simply take one value. No NaN or inf can come out. Name in the manifest: :data:`NORMALIZATION`.
"""

from __future__ import annotations

import numpy as np

NORMALIZATION = "percentile_window_0.5_99.5_to_unit"
LOW_PERCENTILE, HIGH_PERCENTILE = 0.5, 99.5


def intensity_window(volume: np.ndarray) -> tuple[float, float]:
    """The (low, high) intensity window of a volume: its 0.5th and 99.5th percentiles.

    Args:
        volume: Any shape, any real dtype, finite values.

    Example:
        >>> intensity_window(np.arange(1001.0))
        (5.0, 995.0)
    """
    low, high = np.percentile(volume, [LOW_PERCENTILE, HIGH_PERCENTILE])
    return float(low), float(high)


def apply_window(volume: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Clip ``volume`` to ``window`` and scale it linearly to [0, 1]; float32, same shape.

    An empty window (high − low below 1e-6 of the window's magnitude) gives all zeros.

    Example:
        >>> apply_window(np.array([-5.0, 0.0, 5.0, 10.0, 50.0]), (0.0, 10.0))
        array([0. , 0. , 0.5, 1. , 1. ], dtype=float32)
    """
    low, high = window
    width = high - low
    if not width > 1e-6 * max(1.0, abs(low), abs(high)):
        return np.zeros(volume.shape, dtype=np.float32)
    scaled = (np.clip(volume, low, high, dtype=np.float32) - np.float32(low)) / np.float32(width)
    return np.clip(scaled, 0.0, 1.0)
