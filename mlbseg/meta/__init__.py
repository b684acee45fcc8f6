"""The meta-weighting engine: per-element weights α and β of one training step (docs/design.md §3).

``bootstrap_weights`` is the API; ``SCORERS`` names its scoring methods (``method=``), ``get_normalizer`` and
``NORMALIZERS`` the weight normalisations. This package imports only torch, the standard library and itself,
so both tasks (segmentation, classification) can use it (docs/design.md §3.4).
"""

from __future__ import annotations

from mlbseg.meta.normalize import NORMALIZERS, Normalizer, get_normalizer, resolve_normalizer_name
from mlbseg.meta.weights import SCORERS, bootstrap_weights

__all__ = [
    "NORMALIZERS",
    "SCORERS",
    "Normalizer",
    "bootstrap_weights",
    "get_normalizer",
    "resolve_normalizer_name",
]
