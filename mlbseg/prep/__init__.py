"""Data preparation: raw volumes -> prepared slices, splits and calibrated noisy masks (DESIGN.md §2)."""
