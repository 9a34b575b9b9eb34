"""cxr-pipeline's library: everything the DVC stages in stages/ share.

core (params, paths, errors, atomic outputs, tables, the run record), data (sources, layouts,
phantoms, decoding, the pixel cache, splitting), models (backbones, architectures, the
classifier, baselines), training, evaluation, tracking (MLflow) and serving (predict, pyfunc).
"""
