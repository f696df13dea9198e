"""`av2t` options from a settings model: one `--field-name` per field, its type, choices, default and help.

- help: the field's description, then "(default: X)" or "(required)"
- Literal -> choices; list[T] -> one or more values, the option repeatable; bool -> --flag / --no-flag;
  dict -> a JSON object; a pydantic model -> a JSON file of its fields; X | None -> X, default None
- `options(...)` takes a subset of the fields, renamed options, positional fields, fields required here
  and other defaults for this command; `values(ns, model)` reads the parsed fields back.
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo

_NOT_GIVEN = object()


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Wider help columns (the descriptions are sentences)."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32, width=110)


class _Extend(argparse.Action):
    """nargs='+' that may repeat (`--x a b --x c`), replacing the default rather than adding to it."""

    def __call__(self, parser, namespace, values, option_string=None):  # noqa: ANN001
        have = getattr(namespace, self.dest, None)
        have = [] if have is None or have is self.default else have
        setattr(namespace, self.dest, [*have, *values])


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from e
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def _json_file(text: str) -> dict[str, Any]:
    try:
        return _json_object(Path(text).read_text())
    except OSError as e:
        raise argparse.ArgumentTypeError(str(e)) from e
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"{text}: {e}") from e


def _optional(tp: Any) -> Any:
    """X for X | None (and Optional[X]); tp otherwise."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value)) or "none"
    if isinstance(value, dict):
        return json.dumps(value)
    return "none" if value is None else str(value)


def _help(f: FieldInfo, tp: Any, default: Any, required: bool) -> str:
    text = (f.description or "").strip()
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        text += f"; a JSON file of {tp.__name__} fields"
    if required:
        text += " (required)"
    elif "(default" not in text:
        text += f" (default: {_shown(default)})"
    return text.strip().replace("%", "%%")


def _registry_choices(metadata: Any) -> list[str] | None:
    """The choices a `Choices` marker (pipeline.settings) gives a field, or None without one."""
    for m in metadata:
        if callable(getattr(m, "values", None)) and not isinstance(m, type):
            return list(m.values())
    return None


def _kind(tp: Any, metadata: Any = ()) -> dict[str, Any]:
    """argparse keywords for one (non-None) type (Annotated metadata and field metadata included)."""
    if typing.get_origin(tp) is typing.Annotated:
        base, *extra = typing.get_args(tp)
        return _kind(base, [*extra, *metadata])
    if (choices := _registry_choices(metadata)) is not None:
        return {"type": str, "choices": choices}
    if typing.get_origin(tp) is Literal:
        choices = list(typing.get_args(tp))
        return {"type": type(choices[0]), "choices": choices}
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return {"type": _json_file, "metavar": "FILE"}
    if typing.get_origin(tp) is dict or tp is dict:
        return {"type": _json_object, "metavar": "JSON"}
    if tp in (int, float, str, Path):
        return {"type": tp}
    return {"type": str}


def add_option(
    parser: argparse.ArgumentParser,
    name: str,
    f: FieldInfo,
    *,
    flag: str | None = None,
    positional: bool = False,
    required: bool | None = None,
    default: Any = _NOT_GIVEN,
) -> argparse.Action:
    """One argparse option (or positional) for field `name`."""
    required = f.is_required() if required is None else required
    if default is _NOT_GIVEN:
        default = None if f.is_required() else f.get_default(call_default_factory=True)
    tp = _optional(f.annotation)
    help_ = _help(f, tp, default, required)
    if positional:
        if typing.get_origin(tp) is list:  # one or more values
            (item,) = typing.get_args(tp) or (str,)
            return parser.add_argument(name, nargs="+", help=help_, metavar=name.upper(), **_kind(item))
        return parser.add_argument(name, help=help_, **_kind(tp, f.metadata))
    flag = flag or "--" + name.replace("_", "-")
    kw: dict[str, Any] = {"dest": name, "default": default}
    if required:
        kw["required"] = True
    if tp is bool:
        act = parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        act.help = help_  # set here: BooleanOptionalAction would add its own "(default: ...)"
        return act
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp) or (str,)
        return parser.add_argument(flag, nargs="+", action=_Extend, help=help_, **_kind(item), **kw)
    return parser.add_argument(flag, help=help_, **_kind(tp, f.metadata), **kw)


def options(
    parser: argparse.ArgumentParser,
    model: type[BaseModel],
    *,
    only: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    flags: dict[str, str] | None = None,
    positional: Sequence[str] = (),
    required: Iterable[str] = (),
    defaults: dict[str, Any] | None = None,
) -> argparse.ArgumentParser:
    """Add the options of `model`'s fields (`only` these, in the model's order, less `exclude`) to `parser`.

    flags: another option name for a field (e.g. {"sweep_file": "--sweep"}); positional: fields taken as
    positional arguments; required: fields required here though the model has a default; defaults: this
    command's defaults where they differ from the model's.
    """
    fields = model.model_fields
    names = [n for n in (fields if only is None else only) if n not in set(exclude)]
    unknown = [n for n in names if n not in fields]
    if unknown:
        raise ValueError(f"{model.__name__} has no field {unknown}")
    flags, defaults, required = flags or {}, defaults or {}, set(required)
    for name in names:
        add_option(
            parser,
            name,
            fields[name],
            flag=flags.get(name),
            positional=name in positional,
            required=True if name in required else None,
            default=defaults.get(name, _NOT_GIVEN),
        )
    return parser


def values(ns: argparse.Namespace, model: type[BaseModel]) -> dict[str, Any]:
    """The parsed values of `model`'s fields that the command has."""
    return {k: getattr(ns, k) for k in model.model_fields if hasattr(ns, k)}
