"""Frozen feature encoders (CLIP, CLAP, SAM 2, BEiT-3) built from the real library classes."""

import pipeline.compat  # noqa: F401  (torchvision must import before open_clip and sam2 do)
