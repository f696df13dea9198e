"""Forward parity with bok-bok/AV2T-SAM, and how far each deliberate mistake moves the logits.

Loads the parity weights (random, from the key listings, as tests/test_official.py and
tests/test_official_sam1.py do), runs our predict on the parity inputs, and compares with the reference
code's logits (tests/reference/av2t_sam_parity.npz on SAM 2, av2t_sam1_parity.npz on SAM 1). Then it
repeats the forward with one thing changed at a time: the middle adapter dropped, the pseudo-tokens
reversed, the BEiT-3 text position rows shifted, the mask selection fixed to the first output. Each line
prints max |ours - reference| / (1e-4 x max |reference|): <= 1 passes the issue's bar, > 1 fails it.
Exits 1 unless every forward of ours passes and every deliberate mistake fails (the check sees it);
`--mistake NAME` leaves that mistake in our own adapter forward, so the run must exit 1.

usage: python -m bench.official_parity [--backbone sam2|sam1] [--threads 2] [--mistake NAME] [--json]
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

if not __package__:  # run as `python bench/official_parity.py`: import from the repo root, as `-m` does
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np
import torch

from bench import common
from pipeline.model import av2t_sam
from pipeline.official import from_reference_state
from pipeline.official.listing import listing_path, random_state

# the parity test's inputs and golden logits, shared with tests/test_official*.py
PARITY = common.test_helper("official_inputs")


def ratio(ours: torch.Tensor, ref: np.ndarray) -> float:
    """max |ours - ref| over the issue's tolerance (1e-4 x max |ref|)."""
    r = torch.from_numpy(ref)
    return (ours - r).abs().max().item() / (1e-4 * r.abs().max().item())


@contextlib.contextmanager
def patched(obj, name: str, value) -> Iterator[None]:
    """obj.name set to value for the block, restored after."""
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


@contextlib.contextmanager
def adapter_dropped(model) -> Iterator[None]:
    """The middle adapter block left out (24 of 48 on SAM 2, 16 of 32 on SAM 1)."""
    bank = model.audio_prompt_generator
    middle = len(bank.blocks) // 2
    forward = type(bank).forward
    with patched(bank, "forward", lambda f: {i: v for i, v in forward(bank, f).items() if i != middle}):
        yield


@contextlib.contextmanager
def tokens_reversed(model) -> Iterator[None]:
    """The pseudo-tokens in reverse order."""
    proj = model.projector
    tokens = type(proj).tokens
    with patched(proj, "tokens", lambda f: tokens(proj, f).flip(1)):
        yield


@contextlib.contextmanager
def text_positions_shifted(model) -> Iterator[None]:
    """Text tokens read BEiT-3 position rows 0..2 instead of 2..4."""
    table = model.beit3.beit3.encoder.embed_positions.B.weight
    saved = table.detach().clone()
    with torch.no_grad():
        table[2:5] = saved[0:3]
    try:
        yield
    finally:
        with torch.no_grad():
            table.copy_(saved)


@contextlib.contextmanager
def first_mask_always(model) -> Iterator[None]:
    """The mask selection fixed to the first output (select_best as `decoded` looks it up, both backbones)."""

    def first_mask(masks, iou):
        idx = torch.zeros(masks.shape[0], dtype=torch.long)
        return masks[torch.arange(masks.shape[0]), idx], iou[:, 0], idx

    with patched(av2t_sam, "select_best", first_mask):
        yield


# name -> (row label, the mistake as a context manager over the adapter model)
MISTAKES: dict[str, tuple[str, Callable]] = {
    "adapter-dropped": ("adapter {middle} dropped", adapter_dropped),
    "tokens-reversed": ("pseudo-tokens reversed", tokens_reversed),
    "text-positions": ("BEiT-3 text position rows 0..2", text_positions_shifted),
    "first-mask": ("mask selection: always the first", first_mask_always),
}


def verdict(rows: list[tuple[str, float, bool]]) -> list[str]:
    """The rows that miss their expectation: ours must pass the bar (ratio <= 1), a mistake must fail it."""
    return [name for name, r, ours in rows if (r <= 1) != ours]


def run(backbone: str, mistake: str | None) -> list[tuple[str, float, bool]]:
    """(forward, ratio, whether it is ours: expected to pass) of every forward, in the table's order."""
    with np.load(PARITY.GOLDEN[backbone]) as z:
        golden = dict(z)
    x = PARITY.parity_inputs()
    full = PARITY.nudge_mask_choice(random_state(listing_path(True, backbone)), backbone)
    rows, models = [], {}
    for layout in ("adapter", "plain"):
        sd = full if layout == "adapter" else {k: v for k, v in full.items() if "audio_prompt" not in k}
        model = models[layout] = from_reference_state(sd, "parity weights")
        left_in = MISTAKES[mistake][1](model) if mistake and layout == "adapter" else contextlib.nullcontext()
        label = f"{layout}: ours as is" + (
            f" (deliberate mistake: {mistake})" if mistake and layout == "adapter" else ""
        )
        t = time.perf_counter()
        with left_in:
            rows.append((label, ratio(model.predict(**x), golden[f"logits_{layout}"]), True))
        print(f"{layout} forward: {time.perf_counter() - t:.1f} s", file=sys.stderr)
    ref = golden["logits_adapter"]
    model = models["adapter"]
    middle = len(model.audio_prompt_generator.blocks) // 2

    def wrong(name: str) -> tuple[str, float, bool]:
        label, mistake_of = MISTAKES[name]
        with mistake_of(model):
            return label.format(middle=middle), ratio(model.predict(**x), ref), False

    # The dropped adapter changes what the image encoder sees: it runs again.
    rows.append(wrong("adapter-dropped"))

    # The rest leave the SAM image features alone: compute them once and reuse them.
    features = model._image_features_raw
    memo: dict[str, object] = {}

    def once(*args):
        if "v" not in memo:
            memo["v"] = features(*args)
        return memo["v"]

    with patched(model, "_image_features_raw", once):
        rows.append(("adapter: ours, SAM features reused", ratio(model.predict(**x), ref), True))
        rows += [wrong(name) for name in ("tokens-reversed", "text-positions", "first-mask")]
    return rows


def main(argv: list[str] | None = None) -> int:
    """Print the table; 0 when ours passes and every mistake is seen, else 1."""
    p = common.parser(__doc__, threads=2)
    p.add_argument("--backbone", choices=("sam2", "sam1"), default="sam2")
    p.add_argument("--mistake", choices=sorted(MISTAKES), help="leave this mistake in our adapter forward")
    a = common.parse(p, argv)
    with common.Figures(a.json) as out:
        rows = run(a.backbone, a.mistake)
        out.table(
            "forwards",
            [
                {
                    "forward": name,
                    "max err / (1e-4 x max |ref|)": r,
                    "bar": "pass" if r <= 1 else "FAIL",
                    "expected": "pass" if ours else "FAIL",
                }
                for name, r, ours in rows
            ],
            fmt=".3g",
        )
        missed = out.add("missed", verdict(rows))
    return common.exit_code(not missed, f"forwards off their expectation: {missed}")


if __name__ == "__main__":
    sys.exit(main())
