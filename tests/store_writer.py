"""Subprocess writer for the store tests: writes the given blocks, optionally slowly (to be killed)."""

from __future__ import annotations

import sys
import time

from store_helpers import block_data, open_encoder

if __name__ == "__main__":
    url, first, last, delay = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    enc = open_encoder(url)
    for b in range(first, last):
        enc.write_block(b, block_data(enc, b))
        print(f"wrote {b}", flush=True)
        time.sleep(delay)
