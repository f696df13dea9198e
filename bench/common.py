"""What every benchmark shares: the common options, paper shapes, the synthetic store and the output."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

# One definition (and so one meaning) per common option; a bench names the ones it uses.
COMMON = {
    "repeats": (("--repeats",), {"type": int, "help": "timed runs of each measurement; the best is kept"}),
    "batch_size": (("--batch-size",), {"type": int, "help": "rows per batch"}),
    "device": (("--device",), {"help": "torch device the bench computes on (cpu, cuda, cuda:1, ...)"}),
}


def parser(doc: str | None, *common: str, threads: int = 0, **defaults: Any) -> argparse.ArgumentParser:
    """A bench's parser: `--threads` and `--json` always, the named COMMON options, with this bench's defaults.

    `--threads` is torch's intra-op thread count (torch.set_num_threads); 0 leaves torch's own choice.
    """
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("common bench options")
    g.add_argument("--threads", type=int, default=threads, help="torch threads (0: leave torch's default)")
    g.add_argument("--json", action="store_true", help="the figures as one JSON object on stdout")
    for name in common:
        flags, kw = COMMON[name]
        g.add_argument(*flags, **kw)
    p.set_defaults(**defaults)
    return p


def parse(p: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and apply `--threads` (the one place torch's thread count is set)."""
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    return a


# ---------------------------------------------------------------- output


class Figures:
    """A bench's figures: printed as tables, or with --json one JSON object on stdout (the prose on stderr)."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.data: dict[str, Any] = {}
        self._redirect = contextlib.ExitStack()

    def __enter__(self) -> Figures:
        if self.as_json:  # keep stdout for the JSON: every human line goes to stderr
            self._redirect.enter_context(contextlib.redirect_stdout(sys.stderr))
        return self

    def __exit__(self, *exc: object) -> None:
        self._redirect.close()
        if self.as_json and exc[0] is None:
            print(json.dumps(self.data, indent=1, default=_plain))

    def add(self, key: str, value: Any) -> Any:
        """Record one figure (or any JSON-able structure of them) under key."""
        self.data[key] = value
        return value

    def table(self, key: str, rows: list[dict[str, Any]], fmt: str = ".4f") -> None:
        """Record rows under key and print them as a markdown table."""
        self.add(key, rows)
        print(markdown(rows, fmt))


def markdown(rows: list[dict[str, Any]], fmt: str = ".4f") -> str:
    """Rows of equal keys as a markdown table; floats in fmt, the rest as str."""
    cols = list(rows[0]) if rows else []

    def cell(v: Any) -> str:
        return format(v, fmt) if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def _plain(v: Any) -> Any:
    """numpy scalars and arrays, paths and tuples' kin as JSON values."""
    if isinstance(v, np.generic | np.ndarray):
        return v.tolist()
    return str(v)


# ---------------------------------------------------------------- shapes at the paper's size


def sam2_shapes(preset: str, highres: str, trunk_block: int | None = None) -> dict[str, tuple[int, ...]]:
    """Per-frame SAM 2 output shapes of a preset's encoder, built on meta (no weights, no memory)."""
    from pipeline.encoders import sam2_image as S
    from pipeline.presets import encoder_config

    cfg = S.Config.model_validate(
        encoder_config(preset, "sam2") | {"weights": None, "highres": highres, "trunk_block": trunk_block}
    )
    return S.Sam2ImageEncoder(S.build_sam(cfg, empty=True), cfg).output_shapes()


def paper_shapes(highres: str = "after_conv", trunk_block: int | None = None) -> dict[str, tuple]:
    """array -> (per-row shape, stored dtype) of every array the paper preset's encoders write."""
    from pipeline.encoders import beit3 as B
    from pipeline.presets import encoder_config
    from pipeline.settings import ExtractConfig

    feature = ExtractConfig.model_fields["dtype"].default
    bcfg = B.Config.model_validate(encoder_config("paper", "beit3") | {"weights": None})
    beit3 = B.Beit3Encoder(bcfg, B.make_beit3(bcfg, "meta"))
    gt = encoder_config("paper", "gt")["size"]
    # CLIP ViT-B-32's output_dim (open_clip is not imported for a number) and the preset's CLAP width.
    d_clip, d_clap = 512, int(encoder_config("paper", "clap")["joint_embed_shape"])
    shapes = {**sam2_shapes("paper", highres, trunk_block), **beit3.output_shapes()}
    out = {k: (tuple(s), feature) for k, s in shapes.items()}
    return out | {"clip": ((d_clip,), feature), "clap": ((d_clap,), feature), "mask": ((gt, gt), "uint8")}


# ---------------------------------------------------------------- the synthetic store


def synthetic_store(out: Path, subset: str, videos: int, seed: int = 0, **extract: Any) -> tuple[Path, str]:
    """A synthetic tree at out/data and its tiny-preset features at out/<subset>.zarr, on the CPU."""
    from pipeline.data.synth import write_synthetic
    from stages.extract import ExtractConfig
    from stages.extract import extract as run

    root, store = out / "data", str(out / f"{subset}.zarr")
    write_synthetic(root, subset, videos=videos, seed=seed)
    run(ExtractConfig(root=root, subset=subset, store=store, device="cpu", **extract), progress=False)
    return root, store


def exit_code(ok: bool, what: str) -> int:
    """0 when the bench's check passed; else 1, saying which check failed on stderr."""
    if not ok:
        print(f"FAILED: {what}", file=sys.stderr)
    return 0 if ok else 1


def test_helper(name: str) -> ModuleType:
    """tests/<name>.py loaded by its path: `tests` is no package (and site-packages may hold another)."""
    path = Path(__file__).resolve().parents[1] / "tests" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench._tests_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
