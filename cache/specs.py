"""What a feature array is stored as: ArraySpec (per-row shape, dtype, codec), the codecs, inner chunk sizes,
the checksum every chunk carries, and the storage specs of an encoder's outputs (int8 maps with their
`<name>_scale` companions: cache.quant quantises and dequantises them)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import zarr
import zarr.codecs

# Inner chunks of a shard hold about this much; big rows (feature maps) get one row per chunk.
TARGET_CHUNK_BYTES = 1 << 20
# Integrity: every chunk of every array written from now on carries a crc32c checksum (after the
# compressor; the shard index of a sharded array has its own by default), and every chunk of a written
# block is stored, even an all-zero one, so an absent chunk of a done row means lost data.
CHECKSUM = "crc32c"


def array_checksum(arr: zarr.Array) -> str | None:
    """The checksum every (inner) chunk of the array carries: "crc32c", or None (written before checksums)."""
    codecs = list(arr.metadata.codecs)
    for c in list(codecs):
        if isinstance(c, zarr.codecs.ShardingCodec):
            codecs = list(c.codecs)
    return CHECKSUM if any(isinstance(c, zarr.codecs.Crc32cCodec) for c in codecs) else None


CODECS: dict[str, Any] = {
    "none": lambda: None,
    "zstd": lambda: [zarr.codecs.ZstdCodec(level=3)],
    "blosc-lz4": lambda: [zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle", typesize=2)],
    "blosc-zstd-bitshuffle": lambda: [
        zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle", typesize=2)
    ],
}


# Uncompressed by default, measured (bench/bench_feed.py, paper-shaped rows): zstd saves only ~8-11% of the
# bytes of float16 features but makes every read decode (streaming 0.04-0.05 of a plain read vs 0.67-0.95
# uncompressed, which the readers map and check without zarr's codec pipeline). Stores written with zstd
# keep reading.
DEFAULT_CODEC = "none"


@dataclass(frozen=True)
class ArraySpec:
    """One feature array of an encoder: the per-row shape, dtype and codec."""

    shape: tuple[int, ...]
    dtype: str = "float16"
    codec: str = DEFAULT_CODEC

    def row_bytes(self) -> int:
        """Uncompressed bytes of one row."""
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize

    def to_json(self) -> dict[str, Any]:
        """As stored in attributes."""
        return {"shape": list(self.shape), "dtype": self.dtype, "codec": self.codec}


def chunk_rows(spec: ArraySpec, block_rows: int) -> int:
    """Rows per inner chunk: the largest divisor of block_rows under TARGET_CHUNK_BYTES (at least 1)."""
    best = 1
    for c in range(1, block_rows + 1):
        if block_rows % c == 0 and c * spec.row_bytes() <= TARGET_CHUNK_BYTES:
            best = c
    return best


Quantize = Literal["none", "int8"]
QUANTIZE = ("none", "int8")
SCALE_SUFFIX = "_scale"


def scale_name(name: str) -> str:
    """The companion array holding the int8 array `name`'s scales."""
    return name + SCALE_SUFFIX


def scale_names(specs: Mapping[str, ArraySpec]) -> set[str]:
    """The companion scale arrays among specs: `<name>_scale` of an int8 array `name`."""
    return {scale_name(k) for k, s in specs.items() if s.dtype == "int8" and scale_name(k) in specs}


def quantizable(shape: tuple[int, ...]) -> bool:
    """Whether a per-row shape is a (C, H, W) map (stored int8 when asked)."""
    return len(shape) == 3


def storage_specs(
    shapes: Mapping[str, tuple[int, ...]],
    fixed: Mapping[str, str],
    dtype: str,
    quantize: Quantize,
    codec: str,
) -> dict[str, ArraySpec]:
    """The arrays an encoder's outputs are stored as: its fixed dtypes, else `dtype`; maps int8 + scales."""
    if quantize not in QUANTIZE:
        raise ValueError(f"quantize {quantize!r}: choose from {QUANTIZE}")
    out = {}
    for name, shape in shapes.items():
        shape = tuple(int(s) for s in shape)
        if name in fixed:
            out[name] = ArraySpec(shape, fixed[name], codec)
        elif quantize == "int8" and quantizable(shape):
            out[name] = ArraySpec(shape, "int8", codec)
            out[scale_name(name)] = ArraySpec(shape[:1], "float32", codec)
        else:
            out[name] = ArraySpec(shape, dtype, codec)
    return out
