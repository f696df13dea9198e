"""The torchvision op shim: open_clip and sam2 import on a CPU torch, and the fallback nms is right."""

from __future__ import annotations

import subprocess
import sys


def test_open_clip_and_sam2_import_after_the_shim():
    code = (
        "import pipeline.compat, torch, open_clip, sam2\n"
        "b = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30.0]])\n"
        "s = torch.tensor([0.9, 0.8, 0.7])\n"
        "print(torch.ops.torchvision.nms(b, s, 0.5).tolist())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[0, 2]"
