"""A flow's flat parameters from a settings model: one keyword per field, with its default and description.

`@model_params(Model)` gives a `def flow_fn(**params)` the signature of the model's fields, each default a
`pydantic.Field(default, description=...)`, which Prefect reads into the parameter schema (the UI and
`prefect deployment run --param name=value` see every field, its default and its meaning), and which
Prefect replaces by the plain default before the call. The body turns what it received into the model
with `settings(Model, params)`. Light: no Prefect import.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, Field
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

M = TypeVar("M", bound=BaseModel)
F = TypeVar("F", bound=Callable[..., Any])


def model_signature(model: type[BaseModel], exclude: Iterable[str] = ()) -> inspect.Signature:
    """Keyword-only parameters, one per field of `model` (except `exclude`), in the model's order."""
    skip = set(exclude)
    params = []
    for name, f in model.model_fields.items():
        if name in skip:
            continue
        if f.is_required():
            default = Field(description=f.description)
        else:
            default = Field(f.get_default(call_default_factory=True), description=f.description)
        # The field's constraints (ge=1, ...) ride on the type, so Prefect's schema and checks see them too.
        tp = Annotated[(f.annotation, *f.metadata)] if f.metadata else f.annotation
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=tp))
    return inspect.Signature(params)


def model_params(model: type[BaseModel], exclude: Iterable[str] = ()) -> Callable[[F], F]:
    """Decorator: give a `**params` function the flat signature of `model`'s fields (see the module doc)."""

    def give(fn: F) -> F:
        fn.__signature__ = model_signature(model, exclude)  # type: ignore[attr-defined]
        fn.__annotations__ = {}  # the signature holds the real types
        return fn

    return give


def settings(model: type[M], params: dict[str, Any], **fixed: Any) -> M:
    """The validated model of a flow's received parameters (a default left as its Field: the model's)."""
    given = {k: v for k, v in params.items() if not isinstance(v, FieldInfo) and v is not PydanticUndefined}
    return model.model_validate(given | fixed)


def flow_kwargs(fn: Callable[..., Any], s: BaseModel) -> dict[str, Any]:
    """The values of `s` for the parameters of flow function `fn` (to call a flow from a settings object)."""
    return {name: getattr(s, name) for name in inspect.signature(fn).parameters}
