"""Orchestration: the plan (stages and their cache keys), the build, its variants (pruned,
distilled, ensemble members), its summary, and the child process each build runs in."""
