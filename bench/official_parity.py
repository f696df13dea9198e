"""Forward parity with bok-bok/AV2T-SAM, and how far each deliberate mistake moves the logits.

Loads the parity weights (random, from the key listings, as tests/test_official.py and
tests/test_official_sam1.py do), runs our predict on the parity inputs, and compares with the reference
code's logits (tests/reference/av2t_sam_parity.npz on SAM 2, av2t_sam1_parity.npz on SAM 1). Then it
repeats the forward with one thing changed at a time: the middle adapter dropped, the pseudo-tokens
reversed, the BEiT-3 text position rows shifted, the mask selection fixed to the first output. Each line
prints max |ours - reference| / (1e-4 x max |reference|): <= 1 passes the issue's bar, > 1 fails it.

usage: python bench/official_parity.py [--backbone sam2|sam1] [--threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from official_inputs import GOLDEN, nudge_mask_choice, parity_inputs  # noqa: E402

from pipeline.model import av2t_sam  # noqa: E402
from pipeline.official import from_reference_state  # noqa: E402
from pipeline.official.listing import listing_path, random_state  # noqa: E402


def ratio(ours: torch.Tensor, ref: np.ndarray) -> float:
    """max |ours - ref| over the issue's tolerance (1e-4 x max |ref|)."""
    r = torch.from_numpy(ref)
    return (ours - r).abs().max().item() / (1e-4 * r.abs().max().item())


@contextlib.contextmanager
def patched(obj, name: str, value) -> Iterator[None]:
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", choices=("sam2", "sam1"), default="sam2")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    with np.load(GOLDEN[a.backbone]) as z:
        golden = dict(z)
    x = parity_inputs()
    full = nudge_mask_choice(random_state(listing_path(True, a.backbone)), a.backbone)
    rows, models = [], {}
    for layout in ("adapter", "plain"):
        sd = full if layout == "adapter" else {k: v for k, v in full.items() if "audio_prompt" not in k}
        model = models[layout] = from_reference_state(sd, "parity weights")
        t = time.perf_counter()
        rows.append((f"{layout}: ours as is", ratio(model.predict(**x), golden[f"logits_{layout}"])))
        print(f"{layout} forward: {time.perf_counter() - t:.1f} s", file=sys.stderr)
    ref = golden["logits_adapter"]

    # One adapter left out (the middle block: 24 of 48 on SAM 2, 16 of 32 on SAM 1): the image encoder runs again.
    model_adapter = models["adapter"]
    bank = model_adapter.audio_prompt_generator
    middle = len(bank.blocks) // 2
    forward = type(bank).forward
    with patched(bank, "forward", lambda f: {i: v for i, v in forward(bank, f).items() if i != middle}):
        rows.append((f"adapter {middle} dropped", ratio(model_adapter.predict(**x), ref)))

    # The rest leave the SAM image features alone: compute them once and reuse them.
    features = model_adapter._image_features_raw
    memo: dict[str, object] = {}

    def once(*args):
        if "v" not in memo:
            memo["v"] = features(*args)
        return memo["v"]

    with patched(model_adapter, "_image_features_raw", once):
        rows.append(("adapter: ours, SAM features reused", ratio(model_adapter.predict(**x), ref)))
        proj = model_adapter.projector
        tokens = type(proj).tokens
        with patched(proj, "tokens", lambda f: tokens(proj, f).flip(1)):
            rows.append(("pseudo-tokens reversed", ratio(model_adapter.predict(**x), ref)))
        table = model_adapter.beit3.beit3.encoder.embed_positions.B.weight
        saved = table.detach().clone()
        with torch.no_grad():
            table[2:5] = saved[0:3]  # text tokens would read rows 0..2 instead of 2..4
        rows.append(("BEiT-3 text position rows 0..2", ratio(model_adapter.predict(**x), ref)))
        with torch.no_grad():
            table.copy_(saved)

        def first_mask(masks, iou):
            idx = torch.zeros(masks.shape[0], dtype=torch.long)
            return masks[torch.arange(masks.shape[0]), idx], iou[:, 0], idx

        # select_best as `decoded` looks it up, for both backbones
        with patched(av2t_sam, "select_best", first_mask):
            rows.append(("mask selection: always the first", ratio(model_adapter.predict(**x), ref)))

    print("| forward | max err / (1e-4 x max |ref|) | bar |")
    print("|---|---:|---|")
    for name, r in rows:
        print(f"| {name} | {r:.3g} | {'pass' if r <= 1 else 'FAIL'} |")


if __name__ == "__main__":
    main()
