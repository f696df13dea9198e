"""Convert between a published AV2T-SAM checkpoint and our head checkpoint + encoder weights folder.

import: the reference `{name}_best.pth` becomes
  <out>/head.pt                                    our head checkpoint (evaluate/train read it), and
  <out>/weights/evf-sam2-multitask/model.safetensors  its frozen SAM 2 / BEiT-3 / fcs in EVF-SAM2's layout
  (on SAM 1: <out>/weights/evf-sam-multitask/model.safetensors, EVF-SAM1's layout),
so that the `paper-official` (`paper-official-sam1`) preset pointed at <out>/weights builds exactly the
encoders the head was trained with (the frozen-weights fingerprints in head.pt match them). The CLIP and
CLAP files of the preset are linked into <out>/weights from the user's weights folder when they are there.
export: one of our heads (built on its preset's encoders) written in the reference layout.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.model.build import build_model
from pipeline.model.head_checkpoint import head_payload, load_head, read_head, save_head
from pipeline.official import from_reference_state, read_reference, save_reference
from pipeline.official.checkpoint import backbone_of
from pipeline.official.model import PRESETS
from pipeline.presets import encoder_config, resolve_weights

LINKED = ("clip", "clap")  # encoders whose weight files import links next to the written EVF file


def import_reference(
    path: str | Path, out: str | Path, weights_dir: str | Path | None = None, preset: str | None = None
) -> dict[str, Path]:
    """Write our head checkpoint and an EVF-SAM weights folder from a reference checkpoint (SAM 2 or SAM 1).

    preset None: paper-official for a checkpoint on SAM 2, paper-official-sam1 on SAM 1.
    """
    from safetensors.torch import save_file

    out = Path(out)
    sd = read_reference(path)
    preset = preset or PRESETS[backbone_of(sd)]
    model = from_reference_state(sd, path, preset)
    # Where the preset reads its SAM (and BEiT-3) weights: the EVF file written here.
    evf = out / "weights" / encoder_config(preset, "sam2")["weights"]
    evf.parent.mkdir(parents=True, exist_ok=True)
    frozen = {k[len("model.") :]: v.contiguous() for k, v in sd.items() if k.startswith("model.")}
    save_file(frozen, str(evf), metadata={"format": "pt", "source": f"model.* of {Path(path).name}"})
    del frozen
    # Not trained on a store of ours (features {}): any store built by the preset's encoders will do.
    payload = head_payload(
        model, name=Path(path).stem, preset=preset, subset=None, features={}, source=str(path)
    )
    head = save_head(payload, out / "head.pt")
    links = _link_encoder_weights(preset, weights_dir, out / "weights")
    return {"head": head, "weights": out / "weights", "evf": evf, **links}


def _link_encoder_weights(preset: str, weights_dir: str | Path | None, target: Path) -> dict[str, Path]:
    """Symlink the preset's CLIP / CLAP weight files from weights_dir into target (those that exist)."""
    links = {}
    for name in LINKED:
        rel = encoder_config(preset, name).get("weights")
        src = resolve_weights(rel, weights_dir)
        if src is None or Path(rel).is_absolute() or not src.is_file():
            continue
        dst = target / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.is_symlink() or dst.exists():
            dst.unlink()
        os.symlink(src.resolve(), dst)
        links[name] = dst
    return links


def export_reference(
    checkpoint: str | Path,
    out: str | Path,
    weights_dir: str | Path | None = None,
    device: str = "cpu",
    check: bool = True,
) -> Path:
    """Write one of our head checkpoints, on its preset's frozen encoders, as a reference checkpoint.

    check=True (the command line) refuses heads the reference code could not load (see to_reference).
    """
    ck = read_head(checkpoint)
    model = build_model(ck.head, ck.preset, weights_dir=weights_dir, device=device, **ck.widths())
    load_head(ck, model)
    return save_reference(model, out, check)
