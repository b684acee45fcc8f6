"""In-plane resizing of slice stacks with an antialiased bilinear (triangle) filter, as two matrix products.

Each axis is resampled by a matrix whose row ``i`` holds the weights of output pixel ``i``: a triangle
filter centred on the output pixel's centre in input coordinates, ``(i + 0.5) · n_in / n_out``
(pixel-centre aligned, no half-pixel shift), widened by the downsampling factor so that shrinking averages
every input pixel it covers (antialiasing) and rows normalised to sum to 1 (edges clamp). This is the
filter of PIL's ``BILINEAR`` resize, which the reference used, and of ``torch.nn.functional.interpolate
(mode="bilinear", antialias=True, align_corners=False)``. A slice stack [S, H, W] is resized as
``Wy @ stack @ Wxᵀ``, vectorised over slices.

Masks are resized as float 0/1 with the same filter and thresholded at 0.5, so boundaries neither shift
nor grow: the foreground area is preserved up to boundary rounding (the reference thresholded at ``> 0``,
a systematic dilation, docs/reference.md §7 item 40). Label maps with several classes are resized the
same way per class: each class's indicator is filtered as float and every pixel takes the class of the
largest value (ties go to the lower value), which for two classes is the 0.5 threshold again.
"""

from __future__ import annotations

import numpy as np


def resampling_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] float64 weights of a pixel-centre aligned, antialiased triangle filter; rows sum to 1.

    Example:
        >>> resampling_matrix(2, 4)  # upsampling: plain bilinear interpolation, edges clamped
        array([[1.  , 0.  ],
               [0.75, 0.25],
               [0.25, 0.75],
               [0.  , 1.  ]])
    """
    scale = n_in / n_out
    support = max(scale, 1.0)  # the triangle's half-width in input pixels
    centres = (np.arange(n_out) + 0.5) * scale  # output pixel centres in input coordinates
    distance = np.abs((np.arange(n_in) + 0.5)[None, :] - centres[:, None])  # [n_out, n_in]
    weights = np.clip(1.0 - distance / support, 0.0, None)
    return weights / weights.sum(axis=1, keepdims=True)


def resize_slices(stack: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize every slice of a [S, H, W] stack to ``size`` (int for square); float32 [S, h, w].

    Values stay within the input's range (weights are non-negative and sum to 1).
    """
    height, width = (size, size) if isinstance(size, int) else size
    num, rows_in, cols_in = stack.shape
    rows = resampling_matrix(rows_in, height)  # [h, H] float64
    cols = resampling_matrix(cols_in, width)  # [w, W] float64
    # Two large GEMMs over all slices at once (3x faster than a broadcast matmul per slice), in float64 and
    # rounded to float32 once: BLAS sums in an order that depends on its thread count, and in float32
    # that changed the last bit between `prepare --jobs 1` and worker processes.
    wide = stack.astype(np.float64, copy=False).reshape(num * rows_in, cols_in) @ cols.T  # [S·H, w]
    tall = (
        wide.reshape(num, rows_in, width).transpose(0, 2, 1).reshape(num * width, rows_in) @ rows.T
    )  # [S·w, h]
    return np.ascontiguousarray(tall.reshape(num, width, height).transpose(0, 2, 1), dtype=np.float32)


def resize_mask(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize a [S, H, W] 0/1 mask to ``size``: filter it as float, keep values > 0.5; uint8 0/1."""
    return (resize_slices(mask, size) > 0.5).astype(np.uint8)


def resize_labels(labels: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize a [S, H, W] label map (values 0..K-1) to ``size``; uint8 [S, h, w] label values.

    Each class's indicator is filtered as float (:func:`resize_slices`) and the argmax over classes is
    kept; ``numpy.argmax`` returns the first maximum, so ties go to the lower value. Classes absent from
    ``labels`` filter to exactly 0 and can never win, so K is ``labels.max() + 1`` of this map alone.

    Example:
        >>> resize_labels(np.array([[[0, 1, 2, 2]]], dtype=np.uint8), (1, 2))
        array([[[0, 2]]], dtype=uint8)
    """
    best = resize_slices(labels == 0, size)  # [S, h, w] share of the class with the largest share so far
    result = np.zeros(best.shape, dtype=np.uint8)
    for value in range(1, int(labels.max(initial=0)) + 1):  # K passes, each vectorised over the stack
        share = resize_slices(labels == value, size)
        larger = share > best
        result[larger] = value
        best = np.where(larger, share, best)
    return result
