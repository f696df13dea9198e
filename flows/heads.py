"""A head to run, from either kind of file: our head checkpoint, or a published AV2T-SAM checkpoint (imported)."""

from __future__ import annotations

from pathlib import Path

from pipeline.checkpoints import CheckpointError

IMPORTED = "official-import"  # the folder under --out a published checkpoint is imported into


def head_for(
    checkpoint: Path, out: Path, weights_dir: Path | None, preset: str | None
) -> tuple[Path, Path | None]:
    """(head checkpoint, weights folder): ours as given; a published {name}_best.pth imported into out/official-import
    first (`av2t official import`; reused while its head.pt is newer than the file)."""
    from pipeline.model.head_checkpoint import read_head

    try:
        read_head(checkpoint)
        return checkpoint, weights_dir
    except CheckpointError as ours:
        from pipeline.official import read_reference

        try:
            read_reference(checkpoint)
        except CheckpointError:
            raise CheckpointError(
                f"{ours} (nor a published AV2T-SAM checkpoint); give best.pt of `av2t train` or a {{name}}_best.pth"
            ) from ours
    from stages.official import import_reference

    target = Path(out) / IMPORTED
    head = target / "head.pt"
    if head.is_file() and head.stat().st_mtime >= Path(checkpoint).stat().st_mtime:
        ck = read_head(head)
        if ck.data.get("source") == str(checkpoint) and (preset is None or preset == ck.preset):
            return head, target / "weights"
    written = import_reference(checkpoint, target, weights_dir, preset)
    return written["head"], written["weights"]
