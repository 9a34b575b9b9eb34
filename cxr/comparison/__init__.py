"""Comparison: the leaderboard of every evaluated model, its ensemble row and the champion."""
