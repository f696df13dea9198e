"""Errors of the feature store, and Damage: a damaged or lost stored chunk, with the facts that redo it.

Messages here say what is wrong and what fixes it in words; the commands that do it are added where commands
are known (flows.store_hints): a StoreError carries a `hint` (what fixes it) and its facts, and StoreDamaged
its Damage records.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

# What fixes a StoreError, in neutral words (`hint`): the layer that knows the commands names the command.
EXTRACT = "extract"  # extract these encoders' features (facts: store, subset, split, encoders)
EXTRACT_AGAIN = "extract-again"  # extract into this store again, which recreates a group cut short (store)
OTHER_FINGERPRINTS = "allow-other-fingerprints"  # allow a second fingerprint side by side (the setting)


class StoreError(RuntimeError):
    """A feature-store problem; the message names the store and group.

    `hint` (EXTRACT, EXTRACT_AGAIN, OTHER_FINGERPRINTS or None) and `facts` say what fixes it, for the layer
    that knows the commands (flows.store_hints) to name the command; the message says it in words.
    """

    def __init__(self, message: str, hint: str | None = None, **facts: Any):
        super().__init__(message)
        self.hint, self.facts = hint, facts


class StoreUnavailable(StoreError):
    """The storage under the store failed, not its bytes: an object store that cannot be reached, refuses
    the credentials, or has no such bucket (cache.remote). Never damage: nothing stored is wrong, and the
    same command run again once the cause is fixed reads the same bytes."""


# What a read that fails re-raises as it is rather than examine as damage: the storage failed, not the bytes.
STORAGE_ERRORS = (OSError, StoreUnavailable)


class FingerprintMismatch(StoreError):
    """Features exist under another encoder fingerprint than the one asked for."""


class IndexMismatch(StoreError):
    """The store's rows for a split differ from the rows asked for."""


class StoreDamaged(StoreError):
    """Stored chunks are missing, fail their checksum, do not decode or hold non-finite features.

    The message (damage_message) names every damaged chunk (group, encoder key, array, rows, problem) and how
    to repair it; `damage` holds them as Damage records, from which the commands are built
    (flows.store_hints).
    """

    def __init__(self, damage: list[Damage]):
        self.damage = list(damage)
        super().__init__(damage_message(self.damage, limit=DAMAGE_SHOWN))

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.damage,)


DAMAGE_SHOWN = 20  # damaged chunks a reader's error lists


# Arrays written before checksums, in a report (flows.store_hints.UNCHECKED names the command that checks them).
UNCHECKED = "unchecked (written before checksums: verify the store; re-extract into a new store to add them)"
VERIFY_IT = "verify the store"  # what names each damaged chunk, in a summary (cache.info)
CHECKSUM_MISMATCH = "checksum mismatch"
MISSING = "missing"
UNDECODABLE = "undecodable"
NON_FINITE = "non-finite"
INDEX_DIGEST = "does not match the split's index digest"


@dataclass(frozen=True)
class Damage:
    """One damaged (or lost) stored chunk: where it is, the rows it holds, what is wrong, how to redo it."""

    store: str
    subset: str
    split: str
    encoder: str  # name@fingerprint; "" for the split's index
    array: str  # a feature array, "done" (the completion record) or "index/<column>"
    start: int  # rows start..stop-1 of the chunk
    stop: int
    key: str  # the stored object
    problem: str  # checksum mismatch | missing | undecodable | non-finite | does not match the index digest
    detail: str = ""
    # How an extraction recomputes it: encoder names, and the extraction settings (name, value; True for a
    # switch) that remake the encoder's arrays as they are (EncoderGroup.extract_settings).
    reextract: tuple[str, ...] = ()
    options: tuple[tuple[str, str | bool], ...] = field(default=(), compare=False)

    @property
    def group(self) -> str:
        """subset/split."""
        return f"{self.subset}/{self.split}"

    def line(self) -> str:
        """One line: group, encoder key, array, rows, problem, stored object."""
        rows = f"rows {self.start}-{self.stop - 1}" if self.stop - self.start > 1 else f"row {self.start}"
        where = " ".join(x for x in (self.group, self.encoder, self.array) if x)
        detail = f" ({self.detail})" if self.detail else ""
        return f"{where} {rows}: {self.problem}{detail} [{self.key}]"

    def to_json(self) -> dict[str, Any]:
        """As the store's verification report prints it (JSON)."""
        return {
            "group": self.group,
            "subset": self.subset,
            "split": self.split,
            "encoder": self.encoder or None,
            "array": self.array,
            "rows": [self.start, self.stop],
            "key": self.key,
            "problem": self.problem,
            "detail": self.detail,
        }


def damage_lines(damage: list[Damage], limit: int | None = None, listing: str = "") -> list[str]:
    """The damaged chunks, one line each after a heading; `listing` follows the count of those not shown."""
    stores = list(dict.fromkeys(d.store for d in damage))
    shown = damage if limit is None else damage[:limit]
    lines = [f"{', '.join(stores)}: damaged data in the feature store ({len(damage)} chunk(s)):"]
    lines += [f"  {d.line()}" for d in shown]
    if len(shown) < len(damage):
        lines.append(f"  ... and {len(damage) - len(shown)} more{listing}")
    return lines


def damage_message(damage: list[Damage], limit: int | None = None, repaired: bool = False) -> str:
    """The text naming damaged chunks and their fix in words (readers raise it: StoreDamaged).

    flows.store_hints.damage_text is the same text with the commands that repair and re-extract."""
    if not damage:
        return "no damage"
    lines = damage_lines(damage, limit, " (a verification of the store lists them all)")
    if not repaired:
        lines.append(
            "repair: verify the store and repair it (cache.verify.repair: removes the damaged blocks' chunks and"
            " marks their rows not done)"
        )
    lines.append(
        "then re-extract the rows not done (every row of a repaired block), with the preset and threads of the"
        " first extraction for bit-identical features"
    )
    return "\n".join(lines)


def missing_filesystem(url: str, e: ImportError) -> StoreError:
    """An fsspec URL whose filesystem package (s3fs, gcsfs, adlfs, ...) is not installed."""
    from fsspec.registry import known_implementations

    scheme = url.split("://", 1)[0]
    pkg = e.name or known_implementations.get(scheme, {}).get("class", "").split(".")[0]
    return StoreError(
        f"{url}: the {scheme}:// filesystem needs a package that is not installed ({e}): "
        f"pip install {pkg or 'the fsspec implementation for ' + scheme}"
    )


def bad_metadata_file(url: str) -> str | None:
    """The first zarr.json of a local store that is not valid JSON (None for other stores, or if none)."""
    import os

    root = url.removeprefix("file://")
    if "://" in root or not os.path.isdir(root):
        return None
    for folder, _, files in os.walk(root):
        if "zarr.json" in files:
            path = os.path.join(folder, "zarr.json")
            try:
                with open(path, "rb") as f:
                    json.loads(f.read())
            except (OSError, ValueError):
                return path
    return None


def damaged_metadata(url: str, e: json.JSONDecodeError) -> StoreError:
    """A zarr.json that is not JSON (a copy cut short, a full disk in an old zarr version's write)."""
    where = bad_metadata_file(url) or f"a zarr.json under {url}"
    return StoreError(
        f"{where}: the feature store's metadata is not valid JSON ({e.msg}: line {e.lineno} column "
        f"{e.colno}): the store is damaged; restore it from a copy, or delete it and extract again"
    )


def metadata_error(url: str, e: json.JSONDecodeError) -> StoreError | None:
    """The error naming the store's zarr.json that is not JSON (None when every one of url's is JSON)."""
    return damaged_metadata(url, e) if bad_metadata_file(url) is not None else None
