"""`av2t cache verify`: read every stored chunk of a store, name each damaged or lost one, and repair.

Checks, per split group: the index columns decode and hash to the recorded digest; per encoder sub-group:
the completion record decodes, every stored chunk of every array decodes (crc32c checksums where the array
has them; arrays written before checksums are only checked for decoding), float features of done rows are
finite, and no chunk holding done rows is absent (it would read back as zeros). int8 feature maps
(extract --quantize int8) hold no inf/nan, so only their checksums say a chunk is damaged; their float32
`<name>_scale` arrays are checked for finite values like any float array, and the repair commands carry
the quantisation.

Repair takes the damage out of the completion record: for each damaged chunk, the stored objects of its
block (the array's shard, and the block's chunk of the completion record) are deleted, so all rows of that
block read as not done and an extraction recomputes the whole block (a damaged block cannot be read back,
so it is not patched row by row). A damaged index deletes its split group (its rows are unknown): extract
then rebuilds the split.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from zarr.core.sync import sync as zarr_sync

from cache.errors import MISSING, UNCHECKED, Damage, damage_message
from cache.shards import n_objects, object_key
from cache.specs import CHECKSUM
from cache.store import EncoderGroup, FeatureStore, SplitGroup

# How the damage reads in a report: (damage, repaired) -> text. cache.errors.damage_message says the fix in
# words; the `av2t cache verify` command passes flows.store_hints.damage_text, which names the commands.
DamageText = Callable[[list[Damage], bool], str]


@dataclass
class VerifyReport:
    """What `cache verify` found: the damage, what was read, and (after repair) what was done."""

    store: str
    damage: list[Damage] = field(default_factory=list)
    groups: int = 0
    encoders: int = 0
    arrays: int = 0
    objects: int = 0  # stored objects (shards / chunks) read
    unchecked: list[str] = field(default_factory=list)  # group/encoder/array without checksums
    repaired: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        """No damage found."""
        return not self.damage

    def to_json(self, fix: list[str] | None = None) -> dict[str, Any]:
        """One JSON object: problems, summary, unchecked arrays, the fix (commands, given by the caller that
        knows them: flows.store_hints.fix_commands; left out without), repair actions."""
        out = {
            "store": self.store,
            "ok": self.ok,
            "problems": [d.to_json() for d in self.damage],
            "summary": {
                "groups": self.groups,
                "encoders": self.encoders,
                "arrays": self.arrays,
                "objects_read": self.objects,
                "arrays_unchecked": len(self.unchecked),
                "damaged": len(self.damage),
                "rows_affected": _rows_affected(self.damage),
            },
            "unchecked": self.unchecked,
            "fix": fix,
            "repaired": self.repaired,
        }
        if fix is None:
            del out["fix"]
        return out

    def to_text(self, damage_text: DamageText | None = None) -> str:
        """The human report; ends with what to do (in words, or as `damage_text` puts it)."""
        lines = [
            f"verify {self.store}: {self.groups} group(s), {self.encoders} encoder(s), {self.arrays} array(s), "
            f"{self.objects} stored object(s) read"
        ]
        if self.unchecked:
            lines.append(f"{len(self.unchecked)} array(s) {UNCHECKED}:")
            lines += [f"  {a}" for a in self.unchecked[:10]]
            if len(self.unchecked) > 10:
                lines.append(f"  ... and {len(self.unchecked) - 10} more")
        if self.ok:
            lines.append("clean: every stored chunk decodes" + (", checksums match" if self.arrays else ""))
            return "\n".join(lines)
        if self.repaired:
            r = self.repaired
            lines.append(
                f"repaired: deleted {len(r['deleted'])} stored object(s); {r['rows_not_done']} row(s) of "
                f"{r['blocks']} block(s) marked not done (whole blocks: extract recomputes every row of them)"
            )
            if r["groups_deleted"]:
                lines.append(f"deleted split group(s) with a damaged index: {', '.join(r['groups_deleted'])}")
        render = damage_text or (lambda damage, repaired: damage_message(damage, repaired=repaired))
        lines.append(render(self.damage, bool(self.repaired)))
        return "\n".join(lines)


def _rows_affected(damage: list[Damage]) -> int:
    rows: set[tuple[str, str, str, int]] = set()
    for d in damage:
        rows.update((d.group, d.encoder, "", r) for r in range(d.start, d.stop))
    return len(rows)


def verify_encoder(enc: EncoderGroup, report: VerifyReport) -> None:
    """Every chunk of one encoder sub-group: the completion record, then each array."""
    report.encoders += 1
    done_damage = enc.scan("done")
    report.damage += done_damage
    done = enc.done_tolerant()
    for name in [*enc.specs, "done"]:
        report.arrays += 1
        arr = enc.group[name]
        report.objects += n_objects(arr)
        if enc.checksum(name) != CHECKSUM:
            report.unchecked.append(f"{enc.split.path}/{enc.key}/{name}")
        if name == "done":
            continue
        report.damage += enc.missing([name], done=done)
        report.damage += enc.scan(name, done=done)


def verify_store(store: FeatureStore) -> VerifyReport:
    """Read every chunk of every array of every split group and encoder sub-group; name what is damaged."""
    report = VerifyReport(store.url)
    for subset, split in store.groups():
        g = store.split(subset, split)
        report.groups += 1
        _, index_damage = g.read_index()
        report.damage += index_damage
        for c in g.group["index"].array_keys():
            report.arrays += 1
            report.objects += n_objects(g.group["index"][c])
        if g.index_checksum() != CHECKSUM:
            report.unchecked.append(f"{g.path}/index")
        for enc in g.encoders():
            verify_encoder(enc, report)
    return report


def repair(store: FeatureStore, report: VerifyReport) -> VerifyReport:
    """Take the damage of a report out of the store (opened writable): see the module docstring.

    Returns the report with `repaired` filled in. Stores are shared: run it with no writer at work.
    """
    deleted: list[str] = []
    groups_deleted: list[str] = []
    blocks: set[tuple[str, str, int]] = set()
    rows_not_done = 0
    by_group: dict[tuple[str, str], list[Damage]] = {}
    for d in report.damage:
        by_group.setdefault((d.subset, d.split), []).append(d)
    for (subset, split), damage in by_group.items():
        if any(not d.encoder for d in damage):  # the index: its rows are unknown, the group goes
            del store.root[subset][split]
            groups_deleted.append(f"{subset}/{split}")
            continue
        g = store.split(subset, split)
        encoders = {e.key: e for e in g.encoders()}
        for d in damage:
            enc = encoders[d.encoder]
            done = enc.done_tolerant()
            for b in _blocks(g, d):
                sl = g.block_slice(b)
                keys = [object_key(enc.group["done"], b)]
                if d.array != "done" and d.problem != MISSING:
                    keys.append(d.key)
                for k in keys:
                    if k not in deleted:
                        _delete(enc, k)
                        deleted.append(k)
                if (g.path, enc.key, b) not in blocks:
                    blocks.add((g.path, enc.key, b))
                    rows_not_done += int(np.count_nonzero(done[sl]))
    report.repaired = {
        "deleted": deleted,
        "blocks": len(blocks),
        "rows_not_done": rows_not_done,
        "groups_deleted": groups_deleted,
    }
    return report


def _blocks(g: SplitGroup, d: Damage) -> range:
    """The write blocks a damaged chunk's rows fall in."""
    return range(d.start // g.block_rows, (d.stop - 1) // g.block_rows + 1)


def _delete(enc: EncoderGroup, key: str) -> None:
    store = enc.group.store_path.store
    if zarr_sync(store.exists(key)):
        zarr_sync(store.delete(key))
