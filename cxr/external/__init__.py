"""External validation: another source scored by the trained model (stage external@<name>)."""
