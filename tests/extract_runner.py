"""Subprocess for the extract tests: run the extract stage on a tree into a store (to be killed mid-way).

Each block write is followed by a short pause, so that the test sees the store part-way done however fast
the machine extracts (the features written are the same).
"""

from __future__ import annotations

import json
import sys
import time

import stages.extract as se

PAUSE_S = 0.15


def _slow(write):
    def paused(self, work, results):
        write(self, work, results)
        time.sleep(PAUSE_S)

    return paused


if __name__ == "__main__":
    se.Extraction.write = _slow(se.Extraction.write)
    cfg = se.ExtractConfig.model_validate_json(sys.argv[1])
    out = se.extract(cfg, progress=False)
    print(json.dumps({"computed": out["computed"], "failures": len(out["failures"])}), flush=True)
