"""Subprocess for the extract tests: run the extract stage on a tree into a store (to be killed mid-way)."""

from __future__ import annotations

import json
import sys

from stages.extract import ExtractConfig, extract

if __name__ == "__main__":
    cfg = ExtractConfig.model_validate_json(sys.argv[1])
    out = extract(cfg, progress=False)
    print(json.dumps({"computed": out["computed"], "failures": len(out["failures"])}), flush=True)
