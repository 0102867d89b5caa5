"""Training: the loop, its schedules, and its diagnostics."""
