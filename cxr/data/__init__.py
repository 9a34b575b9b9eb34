"""From a source to split tables: sources, layouts, phantoms, decoding, pixel cache, splitting."""
