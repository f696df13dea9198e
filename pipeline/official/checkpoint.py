"""The reference AV2T-SAM checkpoint layout (`torch.save(AVTSAM.state_dict())`), read into and written from ours.

The reference file holds the whole model under the reference's module names:
`model.visual_model.*` (SAM 2 in EVF's naming, or SAM 1 in segment-anything's), `model.mm_extractor.beit3.*`
(BEiT-3), `model.text_hidden_fcs.*`, `projector.*` (projections + MLP) and, with adapters,
`audio_prompt_generator.lightweight_mlp_{i}.*` (+ `shared_mlp.*` on SAM 1).
Our AV2TSAM / AV2TSAM1 holds the same tensors as `sam2.sam.*` (the SAM slot), `beit3.beit3.*` and the head
modules; the head's own copies of the mask decoder and `no_mask_embed` take the reference's (trained) ones,
and so does the frozen SAM encoder, so that exporting gives back the file tensor for tensor.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from pipeline.checkpoints import CheckpointError, read_key_listing, require_file, shape_differences
from pipeline.encoders.sam2_image import evf_to_sam2_key, sam2_to_evf_key
from pipeline.model.av2t_sam import AV2TSAM, REFERENCE_PREFIXES
from pipeline.official.listing import listing_path

SOURCE = "the Hugging Face repo Kyungbok/AV2T-SAM (a `{name}_best.pth` of bok-bok/AV2T-SAM)"
SAM = "model.visual_model."
BEIT3 = "model.mm_extractor.beit3."
ADAPTERS = "audio_prompt_generator."
# Our top-level names of the frozen encoders' tensors.
OUR_SAM, OUR_BEIT3 = "sam2.sam.", "beit3.beit3."
KNOWN_PREFIXES = (SAM, BEIT3, *REFERENCE_PREFIXES.values())  # the same on SAM 1 (all under SAM but two)
# Reference SAM key <-> our SAM encoder's key, per backbone (EVF renames SAM 2's CXBlock gamma; SAM 1 is as is).
SAM_KEYS = {"sam2": (sam2_to_evf_key, evf_to_sam2_key), "sam1": (str, str)}
SAM1_MARK = SAM + "image_encoder.blocks."  # a ViT's blocks; SAM 2's Hiera has image_encoder.trunk.blocks


def read_reference(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a reference checkpoint, on the CPU (memory-mapped when the file allows it)."""
    path = require_file(path, "AV2T-SAM checkpoint", SOURCE)
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) pickles cannot be memory-mapped
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle and zip errors have no common base
        raise CheckpointError(f"{path}: cannot read checkpoint: {e}") from e
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        hint = f" (keys {sorted(obj)[:5]})" if isinstance(obj, Mapping) else ""
        raise CheckpointError(
            f"{path}: expected AVTSAM.state_dict(), a plain dict of tensors, got {type(obj).__name__}{hint}"
        )
    stray = [k for k in obj if not k.startswith(KNOWN_PREFIXES)]
    if stray:
        raise CheckpointError(
            f"{path}: not an AV2T-SAM checkpoint: {len(stray)} key(s) outside {KNOWN_PREFIXES}, e.g. {stray[:5]}"
        )
    return dict(obj)


def has_adapters(sd: Mapping[str, torch.Tensor]) -> bool:
    """Whether a reference state holds the per-block adapters."""
    return any(k.startswith(ADAPTERS) for k in sd)


def backbone_of(sd: Mapping[str, torch.Tensor]) -> str:
    """ "sam1" for a reference state on EVF-SAM1 (a ViT), "sam2" on EVF-SAM2 (Hiera)."""
    return "sam1" if any(k.startswith(SAM1_MARK) for k in sd) else "sam2"


def head_to_reference(key: str, prefixes: Mapping[str, str] = REFERENCE_PREFIXES) -> str:
    """A key of our trainable_state_dict under its reference name (prefixes: the model's)."""
    for ours, ref in prefixes.items():
        if key.startswith(ours):
            return ref + key[len(ours) :]
    raise KeyError(f"{key}: not a head key ({tuple(prefixes)})")


def reference_to_head(key: str, prefixes: Mapping[str, str] = REFERENCE_PREFIXES) -> str | None:
    """A reference key under our trainable_state_dict name, or None for frozen tensors."""
    for ours, ref in prefixes.items():
        if key.startswith(ref):
            return ours + key[len(ref) :]
    return None


def to_reference(model: AV2TSAM, check: bool = True) -> dict[str, torch.Tensor]:
    """Our model's tensors in the reference layout and order (the head's decoder, not the encoder's).

    check=True refuses a model the reference code could not load: its keys and shapes must be exactly those
    of the published checkpoint (paper head, `mul`, SAM 2 Hiera-L or SAM 1 ViT-H, BEiT-3-L, 512-d CLIP,
    1024-d CLAP).
    """
    head = {head_to_reference(k, model.reference_prefixes): v for k, v in _head_state(model).items()}
    to_ref = SAM_KEYS[model.backbone][0]
    out: dict[str, torch.Tensor] = {}
    for k, v in model.sam2.sam.state_dict().items():
        ref = SAM + to_ref(k)
        out[ref] = head.pop(ref, v)  # the trained decoder / no_mask_embed replace the encoder's
    out.update({BEIT3 + k: v for k, v in model.beit3.beit3.state_dict().items()})
    if check:
        rows = read_key_listing(listing_path(model.cfg.adapters, model.backbone))
        want = {k: s for k, s, _ in rows}
        have = {**out, **head}
        problems = shape_differences(want, {k: tuple(v.shape) for k, v in have.items()})
        if problems:
            raise CheckpointError(f"this model has no reference AV2T-SAM layout: {problems}")
        return {k: have[k] for k, _, _ in rows}  # the reference's module order
    out.update(head)
    return out


def load_reference_state(model: AV2TSAM, sd: Mapping[str, torch.Tensor], source: str | Path) -> None:
    """Load a reference state into model strictly: every key used, none missing, shapes equal.

    Works on a model built on the meta device (tensors are assigned, cast to the model's dtype, not copied).
    """
    expected = to_reference(model, check=False)
    problems = shape_differences(
        {k: tuple(v.shape) for k, v in expected.items()}, {k: tuple(v.shape) for k, v in sd.items()}
    )
    if problems:
        raise CheckpointError(f"{source}: does not match this AV2T-SAM model: {problems}")
    own = model.state_dict()
    from_ref = SAM_KEYS[model.backbone][1]
    ours: dict[str, torch.Tensor] = {}
    for ref, v in sd.items():
        head_key = reference_to_head(ref, model.reference_prefixes)
        if head_key is not None:
            # A copy: the head trains; the frozen SAM encoder must not change with it.
            ours[head_key] = v.to(own[head_key].dtype, copy=True)
        if ref.startswith(SAM):
            key = OUR_SAM + from_ref(ref[len(SAM) :])
            ours[key] = v.to(own[key].dtype)
        elif ref.startswith(BEIT3):
            key = OUR_BEIT3 + ref[len(BEIT3) :]
            ours[key] = v.to(own[key].dtype)
    model.load_state_dict(ours, strict=True, assign=True)


def _head_state(model: AV2TSAM) -> dict[str, torch.Tensor]:
    """The head modules' tensors (not cloned), keyed as trainable_state_dict."""
    return {f"{name}.{k}": v for name, m in model.head_modules().items() for k, v in m.state_dict().items()}


def save_reference(model: AV2TSAM, path: str | Path, check: bool = True) -> Path:
    """Write our model as a reference checkpoint (a plain dict the reference code loads strictly).

    check=False also writes models of other sizes in the same naming (tests, tiny presets).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in to_reference(model, check).items()}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(sd, tmp)
    tmp.replace(path)
    return path
