"""Complete verification: the MILP encoding, the solvers, the per-example cascade, its shards."""
