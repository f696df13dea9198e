"""Prefect flows and deployments that call the stages, and the `av2t` command."""

import os

# Prefect reads these at import: a per-project home and no analytics (its absence is noisy offline).
os.environ.setdefault("PREFECT_HOME", os.path.abspath(".prefect"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
