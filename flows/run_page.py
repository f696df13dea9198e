"""What a flow run's page shows about it: its name and tags from its parameters, absolute paths. One helper per
job, shared by every flow (extract, train, evaluate, the nightly)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any
from uuid import UUID

from pydantic import BaseModel
from pydantic.fields import FieldInfo


def preset_label(preset: str | Path) -> str:
    """A preset as a run name or tag shows it: its name (a preset folder: the folder's name)."""
    return Path(str(preset)).name or str(preset)


def absolute(store: str) -> str:
    """A local path made absolute (what a UI user can open); an fsspec URL as it is."""
    return store if "://" in store else str(Path(store).expanduser().resolve())


def run_param(model: type[BaseModel], name: str, parameters: dict[str, Any] | None = None) -> Any:
    """A parameter of the current flow run (or of `parameters`), or the model's default when not given.

    A deployment run carries only the parameters it was given (a run name template would miss the rest).
    """
    if parameters is None:
        from prefect.runtime import flow_run

        parameters = flow_run.parameters or {}
    value = parameters.get(name)
    return model.model_fields[name].default if value is None or isinstance(value, FieldInfo) else value


def label_run(name: str | None = None, add_tags: Iterable[str] = ()) -> None:
    """Rename the current flow run and add tags (kept: those it has, e.g. its deployment's); a failure warns.

    Tags derived from parameters can only be added once the run exists: the deployment creates it.
    """
    from prefect import get_run_logger
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        return
    have = list(ctx.flow_run.tags or [])
    tags = have + [t for t in dict.fromkeys(add_tags) if t and t not in have]
    if tags == have and not name:
        return
    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(UUID(str(ctx.flow_run.id)), name=name, tags=tags)
    except Exception as e:  # a label is not worth the run
        get_run_logger().warning(f"could not rename or tag the run: {e}")
        return
    ctx.flow_run.tags = tags
    if name:
        ctx.flow_run.name = name
