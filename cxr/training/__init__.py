"""Fitting a model: Keras phases and callbacks, scikit-learn baselines, devices, resume."""
