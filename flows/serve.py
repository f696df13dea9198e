"""Serve a `default` deployment of every flow: `python -m flows.serve` (or `av2t serve`)."""

from __future__ import annotations

from prefect import serve

from flows.extract import extract_features
from flows.train import train_head


def deployments() -> list:
    """The deployments this project serves."""
    return [extract_features.to_deployment(name="default"), train_head.to_deployment(name="default")]


def main() -> None:
    """Serve until interrupted."""
    serve(*deployments())


if __name__ == "__main__":
    main()
