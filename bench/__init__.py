"""Benchmarks of av2t: run one as `python -m bench.<name>` (or `python bench/<name>.py`) from the repo root."""
