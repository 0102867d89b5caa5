"""Evaluation: the named attack suite, per-example worst case, curves, sanity checks, the results schema."""
