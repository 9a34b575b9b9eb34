"""The classifiers: Keras backbones and architectures, the classifier head, sklearn baselines."""
