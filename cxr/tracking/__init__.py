"""Tracking: the MLflow store of the workspace and every DVC experiment, and its runs."""
