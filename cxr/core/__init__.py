"""Params, paths, errors, atomic outputs, tables, the name registry and the run record."""
