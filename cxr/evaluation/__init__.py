"""Scoring a model: metrics, statistics, figures, Grad-CAM and the leaderboard."""
