"""Splitting: leakage-safe train / val / test (copies, groups and near-duplicates kept whole)."""
