"""Datasets: loading, the fixed splits, and the nearest-neighbour statistics of a training set."""
