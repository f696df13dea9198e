"""Strict checkpoint reading and loading: every key used, none missing, shapes equal, a clear message."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or does not match the model; names the file."""


def require_file(path: str | Path | None, what: str, source: str) -> Path:
    """The weights file, or a message saying where to put it and where it comes from."""
    if path is None:
        raise CheckpointError(f"{what}: no weights path set in the preset ({source})")
    p = Path(path).expanduser()
    if not p.is_file():
        raise CheckpointError(
            f"{p}: {what} weights not found. Put the file there (it comes from {source}), "
            "or point AV2T_WEIGHTS / --weights-dir at the folder that holds it."
        )
    return p


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file or a torch pickle, read with weights_only=True on the CPU."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors, pickle and zip errors have no common base
        raise CheckpointError(f"{path}: cannot read checkpoint: {e}") from e
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    return dict(obj)


def strip_prefix(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under prefix, with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def _first(keys: Iterable[str], n: int = 8) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def shape_differences(want: Mapping[str, tuple[int, ...]], have: Mapping[str, tuple[int, ...]]) -> str:
    """Missing / unexpected keys and shape mismatches of have against want, as one message ('' if none)."""
    missing = set(want) - set(have)
    unexpected = set(have) - set(want)
    shapes = [f"{k} {have[k]} != {want[k]}" for k in want if k in have and have[k] != want[k]]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {_first(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {_first(unexpected)}")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatch(es): {'; '.join(shapes[:5])}")
    return "; ".join(parts)


def load_strict(module: nn.Module, sd: Mapping[str, torch.Tensor], source: str | Path) -> None:
    """Load sd into module, failing on any missing or unexpected key or shape mismatch; casts dtypes."""
    own = module.state_dict()
    problems = shape_differences(
        {k: tuple(v.shape) for k, v in own.items()}, {k: tuple(v.shape) for k, v in sd.items()}
    )
    if problems:
        raise CheckpointError(f"{source}: does not match {type(module).__name__}: {problems}")
    # Published files mix fp16 and fp32 tensors: cast each to the module's own dtype.
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=True)


def nonpersistent_buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    """The buffers no state dict holds (segment-anything's Sam.pixel_mean / pixel_std), by qualified name."""
    persistent = set(module.state_dict())
    return {n: b for n, b in module.named_buffers() if n not in persistent}


def to_empty_keeping_buffers(module: nn.Module, device: str | torch.device) -> nn.Module:
    """`module.to_empty(device)`, except that non-persistent buffers keep their values.

    No checkpoint can fill them, so after to_empty they would be meta (a later `.to()` fails) or
    uninitialised memory (silently wrong). On device "meta" they stay real, on their own device.
    """
    keep = {
        n: b.detach().clone() for n, b in nonpersistent_buffers(module).items() if b.device.type != "meta"
    }
    module.to_empty(device=device)
    for name, value in keep.items():
        owner, _, leaf = name.rpartition(".")
        target = module.get_submodule(owner) if owner else module
        target.register_buffer(leaf, value if str(device) == "meta" else value.to(device), persistent=False)
    return module


def meta_tensors(module: nn.Module) -> list[str]:
    """Names of the parameters and buffers still on the meta device (none, in a model ready to run)."""
    tensors = [
        *module.named_parameters(remove_duplicate=False),
        *module.named_buffers(remove_duplicate=False),
    ]
    return [n for n, t in tensors if t.device.type == "meta"]


def require_materialised(module: nn.Module, source: str | Path) -> None:
    """Fail, naming them, when a built model keeps tensors on the meta device (they hold no values)."""
    left = meta_tensors(module)
    if left:
        raise CheckpointError(f"{source}: {len(left)} tensor(s) left without values (meta): {_first(left)}")


LISTING_DTYPES = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64}


def read_key_listing(path: str | Path) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    """(key, shape, dtype) per line of a `key<TAB>shape<TAB>dtype` checkpoint key listing, in file order."""
    rows = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        try:
            key, shape, dtype = line.split("\t")
            dims = () if shape == "()" else tuple(int(d) for d in shape.split("x"))
            rows.append((key, dims, LISTING_DTYPES[dtype]))
        except (ValueError, KeyError) as e:
            raise ValueError(f"{path}:{n}: not a key<TAB>shape<TAB>dtype line: {line!r}") from e
    return rows


def state_digest(module: nn.Module | Mapping[str, torch.Tensor]) -> str:
    """sha256 (16 hex) over a module's state (or a state dict): names, shapes, dtypes and bytes."""
    h = hashlib.sha256()
    state = module.state_dict() if isinstance(module, nn.Module) else module
    for k, v in state.items():
        t = v.detach().cpu().contiguous()
        h.update(f"{k}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-dim too
    return h.hexdigest()[:16]


EVF_PREFIXES = ("visual_model.", "mm_extractor.beit3.", "text_hidden_fcs.")


def read_evf_sam2(path: str | Path) -> dict[str, dict[str, torch.Tensor]]:
    """An EVF-SAM2 checkpoint (HF save_pretrained dir or its model.safetensors) split by component prefix.

    Returns {"visual_model.": sam2_sd, "mm_extractor.beit3.": beit3_sd, "text_hidden_fcs.": fcs_sd};
    any key outside these prefixes is an error, so nothing in the file goes unused silently.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    sd = read_state_dict(path)
    stray = [k for k in sd if not k.startswith(EVF_PREFIXES)]
    if stray:
        raise CheckpointError(
            f"{path}: not an EVF-SAM2 checkpoint: {len(stray)} key(s) outside {EVF_PREFIXES}: {_first(stray)}"
        )
    return {p: strip_prefix(sd, p) for p in EVF_PREFIXES}
