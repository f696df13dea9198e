"""The `av2t` commands that fix a feature-store error, named where the commands are known.

cache/ says what is wrong and what fixes it in words and facts: a StoreError's `hint` and `facts`, and the
Damage records of StoreDamaged (which rows of which group, the encoders that recompute them, the extraction
settings their arrays were made with, by setting name). Here those become command lines: the repair
(`av2t cache verify STORE --repair`), the re-extraction (`av2t extract ...` with the options of the first
extraction), the option of a refusal. `av2t` prints an error's `store_message` (flows.errors.one_line), and
`av2t cache verify` its report through `verify_text` / `verify_json`.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from typing import Any

import cache.errors
from cache.errors import (
    DAMAGE_SHOWN,
    EXTRACT,
    EXTRACT_AGAIN,
    OTHER_FINGERPRINTS,
    Damage,
    StoreDamaged,
    StoreError,
    damage_lines,
)
from cache.info import info_text as summary_text
from cache.verify import VerifyReport

EXTRACT_SPLITS = ("train", "val", "test")
# Options a re-extraction needs that the store may not record (stores of older versions): placeholders.
PLACEHOLDERS = {"root": "--root <AVSBench root>", "preset": "--preset <preset it was extracted with>"}


VERIFY = "run `av2t cache verify`"
UNCHECKED = (
    "unchecked (written before checksums: run `av2t cache verify`; re-extract into a new store to add them)"
)
# The words of cache's reports that say what to do -> the same with the command that does it.
COMMANDS_FOR_WORDS = {cache.errors.UNCHECKED: UNCHECKED, cache.errors.VERIFY_IT: VERIFY}


def with_commands(text: str) -> str:
    """A report of cache/ (its summary, its verification) with the commands named where it says what to do."""
    for words, command in COMMANDS_FOR_WORDS.items():
        text = text.replace(words, command)
    return text


def option(name: str, value: str | bool = True) -> str:
    """An `av2t extract` option from its setting's name (pipeline.settings.ExtractConfig): True is a switch."""
    flag = "--" + name.replace("_", "-")
    return flag if value is True else f"{flag} {shlex.quote(str(value))}"


def repair_command(store: str) -> str:
    """The command that takes damaged chunks out of the store and marks their rows not done."""
    return f"av2t cache verify {store} --repair"


def extract_command(
    store: str,
    subset: str,
    splits: Iterable[str],
    encoders: Iterable[str],
    settings: Iterable[tuple[str, str | bool]] = (),
) -> str:
    """`av2t extract` of these encoders' rows, with the settings given (placeholders where root / preset are not)."""
    settings = tuple(settings)
    splits = set(splits)
    ordered = [s for s in EXTRACT_SPLITS if s in splits] + sorted(splits - set(EXTRACT_SPLITS))
    given = {name for name, _ in settings}
    unknown = [ph for name, ph in PLACEHOLDERS.items() if name not in given]
    return " ".join(
        [
            f"av2t extract --store {store} --subset {subset} --splits {' '.join(ordered)}",
            f"--encoders {' '.join(encoders)}",
            *unknown,
            *(option(name, value) for name, value in settings),
        ]
    )


def extract_commands(damage: Iterable[Damage]) -> list[str]:
    """`av2t extract` commands that recompute the rows a repair marked not done (one per subset and options)."""
    plans: dict[tuple[str, str, tuple[Any, ...]], tuple[set[str], dict[str, None]]] = {}
    for d in damage:
        splits, names = plans.setdefault((d.store, d.subset, d.options), (set(), {}))
        splits.add(d.split)
        names.update(dict.fromkeys(d.reextract))
    return [
        extract_command(store, subset, splits, names, options)
        for (store, subset, options), (splits, names) in plans.items()
    ]


def damage_text(damage: list[Damage], repaired: bool = False, limit: int | None = None) -> str:
    """The text naming damaged chunks and the commands that fix them: `cache verify` prints it, `av2t` prints
    it for a reader's StoreDamaged."""
    if not damage:
        return "no damage"
    stores = list(dict.fromkeys(d.store for d in damage))
    lines = damage_lines(damage, limit, " (`av2t cache verify` lists them all)")
    if not repaired:
        lines += [
            f"repair: {repair_command(s)}   (removes the damaged blocks' chunks and marks their rows not done)"
            for s in stores
        ]
    lines += [f"then re-extract: {c}" for c in extract_commands(damage)]
    lines.append(
        "  (extract recomputes exactly the rows not done: every row of a repaired block; pass the preset and"
        " --threads of the first extraction for bit-identical features)"
    )
    return "\n".join(lines)


def fix_commands(report: VerifyReport) -> list[str]:
    """The commands that repair a verify report's damage, in order (empty when clean)."""
    if report.ok:
        return []
    return ([] if report.repaired else [repair_command(report.store)]) + extract_commands(report.damage)


def verify_text(report: VerifyReport) -> str:
    """`av2t cache verify`'s report: what was read, the damage, and the commands that fix it."""
    return with_commands(report.to_text(damage_text=lambda damage, repaired: damage_text(damage, repaired)))


def info_text(info: dict[str, Any]) -> str:
    """`av2t cache info`'s summary (cache.info.info_text), with the command that verifies the store."""
    return with_commands(summary_text(info))


def verify_json(report: VerifyReport) -> dict[str, Any]:
    """`av2t cache verify --json`: the report with its fix commands."""
    return report.to_json(fix=fix_commands(report))


def _extract_hint(e: StoreError) -> str:
    f = e.facts
    names = ", ".join(f'"{n}"' for n in f["encoders"])
    return (
        f"{e}: {extract_command(f['store'], f['subset'], [f['split']], f['encoders'])} "
        f"(the extract-features/extract deployment: --param 'encoders=[..., {names}]')"
    )


def _extract_again_hint(e: StoreError) -> str:
    store = e.facts["store"]
    return f"{e}: run `av2t extract --store {store}` with the first extraction's other options"


def _other_fingerprints_hint(e: StoreError) -> str:
    text = str(e)
    return f"{text.removesuffix('.')} ({option('allow_other_fingerprints')})" + (
        "." if text.endswith(".") else ""
    )


HINTS = {
    EXTRACT: _extract_hint,
    EXTRACT_AGAIN: _extract_again_hint,
    OTHER_FINGERPRINTS: _other_fingerprints_hint,
}


def store_message(e: StoreError) -> str:
    """A feature-store error as `av2t` says it: its message with the command that fixes it."""
    if isinstance(e, StoreDamaged):
        return damage_text(e.damage, limit=DAMAGE_SHOWN)
    hint = HINTS.get(getattr(e, "hint", None) or "")
    return hint(e) if hint is not None else str(e)
