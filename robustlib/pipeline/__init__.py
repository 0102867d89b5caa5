"""Pipeline plumbing: parameters and profiles, output paths, file I/O, worker processes, provenance."""
