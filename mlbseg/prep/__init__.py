"""Data preparation: raw volumes -> prepared slices, splits and calibrated noisy masks (docs/design.md §2)."""
