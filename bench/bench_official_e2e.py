"""The published-weights path at full size: reference file -> `official import` -> end-to-end evaluation.

Random weights of the real sizes: a reference AV2T-SAM file built from the key listing (with or without
adapters), imported with the `paper-official` preset (SAM 2 Hiera-L, BEiT-3-L, MS-CLAP 2023, OpenAI
ViT-B/32), the CLIP and MS-CLAP encoders random too (their files are not needed). Then `evaluate` end to
end on a synthetic S4 tree (frames and audio decoded, every encoder and the head run), and frames/s.
On a GPU this is the issue's measurement; on a CPU it shows the path runs at full size.

usage: python -m bench.bench_official_e2e [--videos 4] [--device cuda] [--no-adapters] [--work DIR]
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

if not __package__:  # run as `python bench/bench_official_e2e.py`: import from the repo root, as `-m` does
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch

from bench import common
from pipeline.data.synth import SynthSpec, write_synthetic
from pipeline.official.listing import listing_path, random_state
from pipeline.presets import encoder_config, preset_dir
from stages.evaluate import EvalConfig, evaluate
from stages.official import import_reference


def random_encoders_preset(out: Path) -> Path:
    """paper-official with CLIP and MS-CLAP random (same architectures), SAM 2 / BEiT-3 from the import."""
    shutil.copytree(preset_dir("paper-official"), out)  # its preset.json still extends the shipped paper
    for name in ("clip", "clap"):
        cfg = encoder_config(out, name)  # clip.json is paper's, inherited
        cfg["weights"] = None  # seeded random init of the same architecture and preprocessing
        (out / f"{name}.json").write_text(json.dumps(cfg, indent=2))
    return out


def main(argv: list[str] | None = None) -> None:
    """Import the reference file, evaluate end to end, print the times."""
    p = common.parser(__doc__.split("\n")[0], "device", device="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--videos", type=int, default=4, help="synthetic videos, ~45%% of them in the test split")
    p.add_argument("--no-adapters", action="store_true")
    p.add_argument("--work", type=Path, help="working folder (default: a temporary one, removed)")
    a = common.parse(p, argv)
    with common.Figures(a.json) as out:
        measure(a, out)


def measure(a, out: common.Figures) -> None:
    """Write and import the reference file, then the end-to-end evaluation."""
    work = a.work or Path(tempfile.mkdtemp(prefix="av2t-official-"))
    try:
        root = work / "data"
        write_synthetic(root, "s4", videos=a.videos, seed=0, spec=SynthSpec(test_fraction=0.45))
        preset = random_encoders_preset(work / "preset")
        t = time.perf_counter()
        ref = work / "avs_best.pth"
        torch.save(random_state(listing_path(not a.no_adapters)), ref)
        written = import_reference(ref, work / "imported", preset=str(preset))
        ref.unlink()
        t_import = time.perf_counter() - t
        cfg = EvalConfig(
            checkpoint=written["head"],
            root=root,
            subset="s4",
            split="test",
            mode="end-to-end",
            device=a.device,
            weights_dir=written["weights"],
            out=work / "eval",
            overlays=0,
            progress=False,
        )
        t = time.perf_counter()
        report = evaluate(cfg)
        seconds = time.perf_counter() - t
        frames = report["frames"]
        out.add("import seconds", t_import)
        out.add("frames/s", frames / seconds)
        out.add("report", {"frames": frames, "M_J": report["M_J"], "M_F": report["M_F"]})
        print(f"paper-official, full size, {'no ' if a.no_adapters else ''}adapters, device {a.device}")
        print(f"reference file written + imported: {t_import:.1f} s")
        print(
            f"end-to-end evaluation (building the encoders from the files, then every frame): {frames} frames "
            f"in {seconds:.1f} s = {frames / seconds:.3f} frames/s"
        )
        print(f"M_J {report['M_J']:.4f}, M_F {report['M_F']:.4f} (random weights: not meaningful)")
    finally:
        if a.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
