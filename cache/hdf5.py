"""Bit-exact round trip of split groups between the Zarr store and HDF5 (for tools that read HDF5)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from cache.errors import StoreError
from cache.index import SplitIndex
from cache.specs import ArraySpec
from cache.store import FeatureStore

STR = h5py.string_dtype("utf-8")


def export_h5(
    store: FeatureStore, path: str | Path, groups: list[tuple[str, str]] | None = None
) -> list[str]:
    """Write the chosen (default: all) split groups to an HDF5 file; returns the group paths written."""
    groups = groups or store.groups()
    written = []
    with h5py.File(path, "w") as f:
        f.attrs["av2t_store_export"] = 1
        for subset, split in groups:
            g = store.split(subset, split)
            hg = f.create_group(g.path)
            for k in ("subset", "split", "n_rows", "block_rows", "index_digest"):
                hg.attrs[k] = g.group.attrs[k]
            idx = g.index
            ig = hg.create_group("index")
            ig.create_dataset("video", data=idx.video.astype(str).astype(object), dtype=STR)
            ig.create_dataset("frame", data=idx.frame)
            ig.create_dataset("category", data=idx.category.astype(str).astype(object), dtype=STR)
            ig.create_dataset("has_mask", data=idx.has_mask)
            for e in g.encoders():
                eg = hg.create_group(f"encoders/{e.key}")
                eg.attrs["name"], eg.attrs["fingerprint"] = e.name, e.fingerprint
                eg.attrs["provenance"] = json.dumps(e.provenance)
                eg.attrs["arrays"] = json.dumps(e.specs_json)
                eg.create_dataset("done", data=e.done_mask().astype(np.uint8))
                for name in e.specs:
                    arr = e.array(name)
                    ds = eg.create_dataset(
                        name,
                        shape=arr.shape,
                        dtype=arr.dtype,
                        chunks=(1, *arr.shape[1:]) if arr.shape[0] else None,
                    )
                    for b in range(g.n_blocks):  # block by block: never the whole array in memory
                        sl = g.block_slice(b)
                        ds[sl] = e.read(name, sl)  # damaged chunks of done rows raise StoreDamaged
            written.append(g.path)
    return written


def import_h5(store: FeatureStore, path: str | Path, overwrite: bool = False) -> list[str]:
    """Recreate every split group of an exported HDF5 file in the store, bit-exact."""
    imported = []
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise StoreError(f"{path}: not a readable HDF5 file: {e}") from e
    with f:
        if "av2t_store_export" not in f.attrs:
            raise StoreError(f"{path}: not an av2t store export (no 'av2t_store_export' attribute)")
        for subset in f:
            for split in f[subset]:
                hg = f[f"{subset}/{split}"]
                if store.has_split(subset, split):
                    if not overwrite:
                        raise StoreError(
                            f"{store.url}: group {subset}/{split} exists; pass overwrite to replace it"
                        )
                    del store.root[subset][split]
                ig = hg["index"]
                index = SplitIndex(
                    ig["video"].asstr()[:].astype(object),
                    ig["frame"][:].astype(np.int16),
                    ig["category"].asstr()[:].astype(object),
                    ig["has_mask"][:].astype(bool),
                )
                if index.digest() != hg.attrs["index_digest"]:
                    raise StoreError(f"{path}: {subset}/{split} index does not match its recorded digest")
                g = store.require_split(subset, split, index, int(hg.attrs["block_rows"]))
                for key, eg in hg.get("encoders", {}).items():
                    specs = {
                        k: ArraySpec(tuple(v["shape"]), v["dtype"], v["codec"])
                        for k, v in json.loads(eg.attrs["arrays"]).items()
                    }
                    enc = g.require_encoder(
                        str(eg.attrs["name"]),
                        json.loads(eg.attrs["provenance"]),
                        specs,
                        allow_other_fingerprints=True,
                    )
                    if enc.key != key:
                        raise StoreError(f"{path}: {subset}/{split}/{key} provenance hashes to {enc.key}")
                    for name in specs:
                        arr = enc.writable(name)  # every chunk stored: an absent one means lost data
                        for b in range(g.n_blocks):
                            sl = g.block_slice(b)
                            arr[sl] = eg[name][sl]
                    enc.group["done"][:] = eg["done"][:]
                imported.append(f"{subset}/{split}")
    return imported
