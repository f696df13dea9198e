"""Serve a `default` deployment of every flow: `python -m flows.serve` (or `av2t serve`)."""

from __future__ import annotations

from prefect import serve
from prefect.schedules import Cron

from flows.evaluate import evaluate
from flows.extract import extract_features
from flows.prefect_runtime import ServerError, api_url
from flows.train import train_head

NIGHTLY_CRON = "0 3 * * *"


def deployments() -> list:
    """The deployments this project serves."""
    return [
        extract_features.to_deployment(name="default"),
        train_head.to_deployment(name="default"),
        evaluate.to_deployment(name="default"),
        # End to end on the test split with the newest checkpoint, every night; flags regressions.
        evaluate.to_deployment(
            name="nightly",
            schedules=[Cron(NIGHTLY_CRON, timezone="UTC")],
            parameters={"mode": "end-to-end", "split": "test"},
        ),
    ]


def main() -> None:
    """Serve until interrupted (on the server at PREFECT_API_URL: a temporary one would die with us)."""
    if not api_url():
        raise ServerError(
            "serving needs a running Prefect server: start one (`prefect server start`) and set "
            "PREFECT_API_URL (e.g. http://127.0.0.1:4200/api)"
        )
    serve(*deployments())


if __name__ == "__main__":
    main()
