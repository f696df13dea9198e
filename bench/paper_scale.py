"""Paper-size benchmark: is head training from the cache compute-bound or IO-bound on one H200?

Run: python -m bench.paper_scale [--rows 64] [--variants after,before,k44,k40] [--skip-tiny]
         [--h200-tflops 990 --efficiency 0.4 --hbm-gbs 4800]

Per head variant (paper AV2T-SAM: SAM 2 Hiera-L + BEiT-3-L, paper head, built on the meta device):
- the cached arrays it reads (`cached_fields()` + the encoders' `output_shapes()`), bytes per row and
  per batch of 8 (float16 features, uint8 mask);
- FLOPs per training step (forward + backward, batch 8) counted with FlopCounterMode on meta tensors;
- the rate at which the train stage's reader delivers paper-shaped rows on this machine: `--rows` rows
  written through the cache API (default codec), two shuffled epochs of batches of 8, page cache warm,
  streaming and resident (`open_reader`, from cache.feed or cache.batches, when it exists; else FeatureBatches +
  prefetch, which only streams), against a plain mmap read and an in-RAM gather of the same bytes;
- the implied step time on one H200 and the verdict: compute-bound, or IO-bound by how much.
Then the `tiny` CPU epoch (bench/bench_train.py's synthetic MS3): the share of the cached epoch spent
waiting for data (epochs 1 and 2, each reader mode), and the cached-vs-live speed-up against its FLOP bound.
Nothing here asserts a time: it prints what it measured, on what, and when.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

if not __package__:  # run as `python bench/paper_scale.py`: import from the repo root, as `-m` does
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

import cache.batches as CB
from bench import common
from cache import ArraySpec, FeatureStore, SplitIndex
from cache.batches import FeatureBatches, Source, prefetch, to_device
from pipeline.encoders import beit3 as B
from pipeline.encoders import sam2_image as S
from pipeline.model.av2t_sam import AV2TSAM
from pipeline.model.config import head_config
from pipeline.model.loss import segmentation_loss
from pipeline.presets import encoder_config
from pipeline.settings import ExtractConfig

PRESET = "paper"
BATCH = 8
S4_TRAIN_ROWS = 3452  # AVSBench S4 train frames: what a resident split would hold
H200_FREE_GIB = 110  # H200 memory left after the frozen models and activations (../shared/PERFORMANCE.md)
GPU_GB = {"H100": 80, "H200": 141}  # memory per GPU (decimal GB, as sold)
OVERHEAD_GIB = GPU_GB["H200"] * 1e9 / 2**30 - H200_FREE_GIB  # frozen models + activations: the same on either
RANKS = (1, 2, 4, 8)
DEFAULT_CODEC = ExtractConfig.model_fields["codec"].default
DEFAULT_BLOCK_ROWS = ExtractConfig.model_fields["block_rows"].default
FEATURE_DTYPE = ExtractConfig.model_fields["dtype"].default
MiB = 2**20

# name -> (label, sam2 highres, adapters start block or None)
VARIANTS = {
    "after": ("no adapters, high-res after conv", "after_conv", None),
    "before": ("no adapters, high-res before conv", "before_conv", None),
    "k44": ("adapters from block 44", "after_conv", 44),
    "k40": ("adapters from block 40", "after_conv", 40),
}


def now() -> str:
    """UTC wall clock, for the log lines."""
    return dt.datetime.now(dt.UTC).strftime("%H:%M:%S")


def log(msg: str) -> None:
    """A progress line with the time it was printed and the machine's 1-minute load average."""
    print(f"[{now()}, load {os.getloadavg()[0]:.1f}] {msg}", flush=True)


# ---------------------------------------------------------------- the paper model on meta


def paper_model(highres: str, start_block: int | None) -> tuple[AV2TSAM, dict[str, tuple[int, ...]], dict]:
    """The paper AV2T-SAM on meta, the per-row shape of every store array it reads, and their dtypes."""
    scfg = S.Config.model_validate(
        encoder_config(PRESET, "sam2") | {"weights": None, "highres": highres, "trunk_block": start_block}
    )
    bcfg = B.Config.model_validate(encoder_config(PRESET, "beit3") | {"weights": None})
    sam2 = S.Sam2ImageEncoder(S.build_sam(scfg, empty=True), scfg)
    beit3 = B.Beit3Encoder(bcfg, B.make_beit3(bcfg, "meta"))
    # CLIP ViT-B-32's output_dim (open_clip is not imported for a number) and the preset's CLAP width.
    d_clip, d_clap = 512, int(encoder_config(PRESET, "clap")["joint_embed_shape"])
    adapters = start_block is not None
    head = head_config(PRESET, adapters=adapters, adapter_start_block=start_block or 0)
    with torch.device("meta"):
        model = AV2TSAM(head, sam2, beit3, d_clip, d_clap)
    model = model.to_empty(device="meta")
    gt = encoder_config(PRESET, "gt")["size"]
    all_shapes = {
        **sam2.output_shapes(),
        **beit3.output_shapes(),
        "clip": (d_clip,),
        "clap": (d_clap,),
        CB.MASK: (gt, gt),
    }
    owner = {a: enc for enc, arrays in model.cached_fields().items() for a in arrays}
    owner[CB.MASK] = "gt"
    shapes = {a: tuple(all_shapes[a]) for a in owner}
    dtypes = {a: "uint8" if a == CB.MASK else FEATURE_DTYPE for a in owner}
    return model, shapes, {"dtypes": dtypes, "owner": owner}


def step_flops(model: AV2TSAM, shapes: dict[str, tuple[int, ...]]) -> tuple[int, int, str]:
    """(forward FLOPs, forward+backward FLOPs, how) of one training step on a meta batch of 8."""
    batch = {a: torch.empty((BATCH, *s), device="meta") for a, s in shapes.items()}
    model.train()
    with FlopCounterMode(display=False) as fc:
        out = model.forward_cached(batch)
        loss = segmentation_loss(out, batch[CB.MASK], model.cfg)["loss"]
    fwd = fc.get_total_flops()
    try:
        with FlopCounterMode(display=False) as fc:
            loss.backward()
        return fwd, fwd + fc.get_total_flops(), "counted fwd+bwd"
    except Exception as e:  # an op without a meta backward: the usual 3x rule
        return fwd, 3 * fwd, f"fwd counted, bwd = 2x fwd ({type(e).__name__})"


# ---------------------------------------------------------------- paper-shaped rows in a store


def feature_rows(shape: tuple[int, ...], n: int, seed: int) -> np.ndarray:
    """n float16 rows with conv-feature statistics (bench_store.realistic_maps for any shape)."""
    rng = np.random.default_rng(seed)
    if len(shape) == 3:
        c, h, w = shape
        coarse = torch.from_numpy(
            rng.standard_normal((n, c, max(1, h // 8), max(1, w // 8)), dtype=np.float32)
        )
        x = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
        x += 0.3 * torch.from_numpy(rng.standard_normal((n, c, h, w), dtype=np.float32))
        scale = torch.from_numpy(rng.lognormal(0, 0.5, (1, c, 1, 1)).astype(np.float32))
    else:  # tokens (T, D) or embeddings (D,)
        x = torch.from_numpy(rng.standard_normal((n, *shape), dtype=np.float32))
        scale = torch.from_numpy(rng.lognormal(0, 0.5, shape[-1:]).astype(np.float32))
    return (torch.nn.functional.gelu(x) * scale).numpy().astype(np.float16)


def mask_rows(shape: tuple[int, ...], n: int, seed: int) -> np.ndarray:
    """n binary masks (0/1 uint8): one random ellipse each, like an object mask."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    out = np.zeros((n, h, w), np.uint8)
    for i in range(n):
        cy, cx = rng.uniform(0.2, 0.8, 2) * (h, w)
        ry, rx = rng.uniform(0.1, 0.3, 2) * (h, w)
        out[i] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    return out


POOL = 4  # distinct rows generated per array; row r stores pool[r % POOL] (every chunk holds whole rows)


def write_paper_store(
    tmp: Path, rows: int, shapes: dict, meta: dict, block_rows: int
) -> tuple[str, dict[str, Source], dict[str, Path]]:
    """A store holding `rows` rows of every array (cache API, default codec), plus one .npy per array."""
    url = str(tmp / "paper.zarr")
    index = SplitIndex.from_rows([(f"v{i // 5:05d}", i % 5 + 1, "c", True) for i in range(rows)])
    g = FeatureStore(url, mode="w").require_split("s4", "train", index, block_rows)
    by_enc: dict[str, list[str]] = {}
    for a, enc in meta["owner"].items():
        by_enc.setdefault(enc, []).append(a)
    srcs, npys = {}, {}
    for k, (enc_name, arrays) in enumerate(by_enc.items()):
        specs = {a: ArraySpec(shapes[a], meta["dtypes"][a], DEFAULT_CODEC) for a in arrays}
        prov = {"encoder": enc_name, "config": {"bench": "paper_scale"}, "weights": "none"}
        enc = g.require_encoder(enc_name, prov, specs)
        pools = {
            a: mask_rows(shapes[a], POOL, k) if a == CB.MASK else feature_rows(shapes[a], POOL, 7 * k + j)
            for j, a in enumerate(arrays)
        }
        for b in range(g.n_blocks):
            sl = g.block_slice(b)
            enc.write_block(b, {a: p[np.arange(sl.start, sl.stop) % POOL] for a, p in pools.items()})
        for a, p in pools.items():
            srcs[a] = Source(enc.key, a)
            npys[a] = tmp / f"{a}.npy"
            mm = np.lib.format.open_memmap(npys[a], "w+", p.dtype, (rows, *p.shape[1:]))
            for r in range(rows):
                mm[r] = p[r % POOL]
            mm.flush()
            del mm
    return url, srcs, npys


# ---------------------------------------------------------------- readers


def new_reader():
    """(open_reader, where) of the train stage's new reader (cache.feed, or cache.batches), or (None, why not)."""
    try:
        import cache.feed as feed

        if hasattr(feed, "open_reader"):
            return feed.open_reader, "cache.feed.open_reader"
    except ImportError as e:  # cache/feed.py absent, or mid-edit
        why = f"cache.feed does not import ({e})"
    else:
        why = "cache.feed has no open_reader"
    if hasattr(CB, "open_reader"):
        return CB.open_reader, "cache.batches.open_reader"
    return None, why


def has_open_reader() -> bool:
    """Whether the new public reader (open_reader) is there."""
    return new_reader()[0] is not None


def open_new(url: str, subset: str, split: str, srcs: dict[str, Source], mode: str, seed: int):
    """(label, epoch function) of open_reader in this mode (its describe() line in the label)."""
    fn, where = new_reader()
    t = time.perf_counter()
    r = fn(url, subset, split, srcs, batch_size=BATCH, shuffle=True, seed=seed, mode=mode)
    secs = time.perf_counter() - t
    desc = r.describe() if hasattr(r, "describe") else f"mode={mode!r}"
    return f"{where}: {desc}; open {secs:.1f} s", r.epoch


def reader_epochs(url: str, srcs: dict[str, Source], mode: str, seed: int = 0):
    """(label, a function epoch -> iterator of batches) for the train stage's reader in this mode, or None."""
    if has_open_reader():
        return open_new(url, "s4", "train", srcs, mode, seed)
    if mode != "streaming":
        return None  # today's reader has no resident mode
    ds = FeatureBatches(url, "s4", "train", srcs, batch_size=BATCH, shuffle=True, seed=seed)
    return "FeatureBatches + prefetch", lambda e: prefetch(ds, e)


def batch_bytes(b: dict[str, torch.Tensor]) -> int:
    """Bytes of the arrays of one batch (row ids left out)."""
    return sum(v.numel() * v.element_size() for k, v in b.items() if k != "row")


def time_reader(epoch_fn, epochs: int = 2) -> list[tuple[float, int]]:
    """(seconds, bytes) per shuffled epoch, every batch touched once (a sum on one element per array)."""
    out = []
    for e in range(epochs):
        t, n = time.perf_counter(), 0
        for b in epoch_fn(e):
            n += batch_bytes(b)
            for k, v in b.items():
                if k != "row":
                    v.view(-1)[-1].item()
        out.append((time.perf_counter() - t, n))
    return out


def epoch_orders(n: int, seed: int, epochs: int = 2) -> list[list[np.ndarray]]:
    """FeatureBatches' shuffled batches (sorted rows), per epoch."""
    out = []
    for e in range(epochs):
        order = np.arange(n)
        np.random.default_rng((seed, e)).shuffle(order)
        out.append([np.sort(order[i : i + BATCH]) for i in range(0, n, BATCH)])
    return out


def time_mmap(npys: dict[str, Path], n: int) -> list[tuple[float, int]]:
    """The same shuffled batches fancy-indexed out of one np.load(mmap_mode='r') per array."""
    mms = {a: np.load(p, mmap_mode="r") for a, p in npys.items()}
    out = []
    for batches in epoch_orders(n, 0):
        t, nb = time.perf_counter(), 0
        for rows in batches:
            for m in mms.values():
                x = torch.from_numpy(np.ascontiguousarray(m[rows]))
                nb += x.numel() * x.element_size()
        out.append((time.perf_counter() - t, nb))
    return out


def time_ram_gather(npys: dict[str, Path], n: int) -> tuple[float, list[tuple[float, int]]]:
    """Load every array into RAM once (seconds), then gather the same batches from memory."""
    t = time.perf_counter()
    arrs = {a: np.load(p) for a, p in npys.items()}
    load = time.perf_counter() - t
    out = []
    for batches in epoch_orders(n, 0):
        t, nb = time.perf_counter(), 0
        for rows in batches:
            for m in arrs.values():
                x = torch.from_numpy(m[rows])
                nb += x.numel() * x.element_size()
        out.append((time.perf_counter() - t, nb))
    return load, out


def rate(epochs: list[tuple[float, int]]) -> float:
    """MiB/s of the steady state: the last epoch (the first may include opening / loading)."""
    s, n = epochs[-1]
    return n / MiB / s


def fmt_epochs(epochs: list[tuple[float, int]]) -> str:
    """Per-epoch MiB/s."""
    return " / ".join(f"{n / MiB / s:,.0f}" for s, n in epochs)


# ---------------------------------------------------------------- verdict


def verdict(compute_ms: float, io_ms: float) -> str:
    """compute-bound, or IO-bound by N x, with the GPU's busy share."""
    busy = compute_ms / max(compute_ms, io_ms)
    if io_ms <= compute_ms:
        return f"compute-bound (IO {io_ms / compute_ms:.1%} of compute, GPU busy 100%)"
    return f"IO-bound by {io_ms / compute_ms:.1f}x (GPU busy {busy:.0%})"


def paper_variant(name: str, a: argparse.Namespace, tmp: Path) -> dict:
    """Everything measured and counted for one variant."""
    label, highres, k = VARIANTS[name]
    log(f"{label}: building the paper model on meta and counting FLOPs")
    model, shapes, meta = paper_model(highres, k)
    row = {s: math.prod(shp) * np.dtype(meta["dtypes"][s]).itemsize for s, shp in shapes.items()}
    fwd, total, how = step_flops(model, shapes)
    trainable = sum(p.numel() for p in model.trainable_parameters())
    del model
    log(f"{label}: writing {a.rows} paper-shaped rows ({sum(row.values()) * a.rows / MiB:,.0f} MiB raw)")
    vdir = tmp / name
    vdir.mkdir()
    t = time.perf_counter()
    url, srcs, npys = write_paper_store(vdir, a.rows, shapes, meta, a.block_rows)
    write_s = time.perf_counter() - t
    stored = sum(p.stat().st_size for p in Path(url).rglob("*") if p.is_file())
    log(f"{label}: written in {write_s:.1f} s; reading two shuffled epochs per reader")
    readers = {}
    for mode in ("streaming", "resident"):
        r = reader_epochs(url, srcs, mode)
        if r is not None:
            readers[mode] = (r[0], time_reader(r[1]))
    mmap = time_mmap(npys, a.rows)
    ram_load, ram = time_ram_gather(npys, a.rows)
    shutil.rmtree(vdir, ignore_errors=True)
    return {
        "name": name,
        "label": label,
        "shapes": shapes,
        "row_bytes": row,
        "stored_bytes_per_row": stored / a.rows,
        "fwd": fwd,
        "flops": total,
        "flops_how": how,
        "trainable": trainable,
        "write_s": write_s,
        "readers": readers,
        "mmap": mmap,
        "ram": ram,
        "ram_load_s": ram_load,
    }


def report_paper(results: list[dict], a: argparse.Namespace) -> None:
    """Per-variant details, then the table and the verdicts."""
    eff_tflops = a.h200_tflops * a.efficiency
    print(
        f"\nH200 model: {a.h200_tflops:g} dense bf16 TFLOP/s x {a.efficiency:g} efficiency = "
        f"{eff_tflops:g} TFLOP/s; HBM {a.hbm_gbs:g} GB/s. Batch {BATCH}, {FEATURE_DTYPE} features, "
        f"uint8 mask, codec {DEFAULT_CODEC!r}, {DEFAULT_BLOCK_ROWS if a.block_rows is None else a.block_rows}"
        f" rows per block, {a.rows} rows written per variant, page cache warm.\n"
    )
    for r in results:
        row_mib = sum(r["row_bytes"].values()) / MiB
        arrays = ", ".join(f"{k} {tuple(v)} {r['row_bytes'][k] / MiB:.2f}" for k, v in r["shapes"].items())
        print(f"{r['label']}: {row_mib:.2f} MiB/row raw, {r['stored_bytes_per_row'] / MiB:.2f} stored")
        print(f"  arrays (MiB/row): {arrays}")
        print(
            f"  step: fwd {r['fwd'] / 1e12:.2f} TFLOP, fwd+bwd {r['flops'] / 1e12:.2f} TFLOP "
            f"({r['flops_how']}); {r['trainable'] / 1e6:.1f} M trainable parameters"
        )
        for mode, (lab, ep) in r["readers"].items():
            print(f"  reader {mode:<9} [{lab}]: MiB/s per epoch {fmt_epochs(ep)}")
        if "resident" not in r["readers"]:
            print("  reader resident  : none (today's reader only streams): the in-RAM gather stands in")
        print(
            f"  plain mmap fancy index: {fmt_epochs(r['mmap'])} MiB/s; in-RAM gather: {fmt_epochs(r['ram'])} "
            f"MiB/s (after a {r['ram_load_s']:.1f} s load); reader streaming / mmap = "
            f"{rate(r['readers']['streaming'][1]) / rate(r['mmap']):.2f}"
        )
    print(
        "\n| variant | MiB/batch | TFLOP/step | H200 compute ms | reader MiB/s (streaming / resident) "
        "| IO ms (streaming / resident host / resident in HBM) | verdict streaming | verdict resident |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        mib = sum(r["row_bytes"].values()) * BATCH / MiB
        comp = r["flops"] / (eff_tflops * 1e12) * 1e3
        stream = rate(r["readers"]["streaming"][1])
        if "resident" in r["readers"]:
            res, res_lab = rate(r["readers"]["resident"][1]), ""
        else:
            res, res_lab = rate(r["ram"]), "*"
        io_s, io_r = mib / stream * 1e3, mib / res * 1e3
        io_h = mib * MiB / (a.hbm_gbs * 1e9) * 1e3
        split_gib = sum(r["row_bytes"].values()) * S4_TRAIN_ROWS / 2**30
        fits = split_gib <= H200_FREE_GIB
        hbm_v = verdict(comp, io_h) if fits else f"S4 train {split_gib:.0f} GiB > {H200_FREE_GIB} GiB"
        print(
            f"| {r['label']} | {mib:.1f} | {r['flops'] / 1e12:.2f} | {comp:.1f} | {stream:,.0f} / {res:,.0f}"
            f"{res_lab} | {io_s:.0f} / {io_r:.0f}{res_lab} / {io_h:.3f} | {verdict(comp, io_s)} | "
            f"host: {verdict(comp, io_r)}; HBM: {hbm_v} |"
        )
    if any("resident" not in r["readers"] for r in results):
        print(
            "\n* no resident reader yet: an in-RAM numpy gather of the same bytes (a resident reader's host bound)"
        )
    print(
        f"Resident in HBM: the S4 train split ({S4_TRAIN_ROWS} rows) must fit in ~{H200_FREE_GIB} GiB; "
        "the HBM IO time is a gather at full HBM bandwidth (a lower bound)."
    )


# ---------------------------------------------------------------- data parallel: N GPUs


def allreduce_ms(params: int, n: int, link_gbs: float) -> float:
    """Ring all-reduce of the fp32 gradients of `params` trainable parameters over n ranks: 2(n-1)/n x bytes."""
    return 2 * (n - 1) / n * params * 4 / (link_gbs * 1e9) * 1e3


def scaling(results: list[dict], a: argparse.Namespace) -> list[dict]:
    """Per variant, GPU kind and N: bytes each rank holds resident (its share of the S4 train split), whether
    it fits, and the implied step time of one global batch of 8 (compute / N, the data of its micro-batch:
    a gather in HBM when resident, else the measured streaming rate per rank, overlapped with compute by the
    reader's prefetch, then one all-reduce of the trainable gradients, not overlapped)."""
    kinds = {
        "H100": (a.h100_tflops, a.h100_hbm_gbs),
        "H200": (a.h200_tflops, a.hbm_gbs),
    }
    rows = []
    for r in results:
        row_b = sum(r["row_bytes"].values())
        stream = rate(r["readers"]["streaming"][1]) * MiB  # bytes/s of one reader on this machine
        for kind, (tflops, hbm) in kinds.items():
            free = GPU_GB[kind] * 1e9 / 2**30 - OVERHEAD_GIB
            base = None
            for n in RANKS:
                held = row_b * math.ceil(S4_TRAIN_ROWS / n) / 2**30
                fits = held <= free
                comp = r["flops"] / n / (tflops * a.efficiency * 1e12) * 1e3
                micro = row_b * BATCH / n
                io = micro / (hbm * 1e9) * 1e3 if fits else micro / stream * 1e3
                ar = allreduce_ms(r["trainable"], n, a.link_gbs)
                step = max(comp, io) + ar
                base = base or step
                rows.append(
                    {
                        "variant": r["name"],
                        "gpu": kind,
                        "N": n,
                        "GiB/rank": round(held, 1),
                        "fits": "resident" if fits else "streams",
                        "compute ms": round(comp, 1),
                        "data ms": round(io, 2 if fits else 0),
                        "all-reduce MB": round(r["trainable"] * 4 / 1e6, 1),
                        "all-reduce ms": round(ar, 2),
                        "step ms": round(step, 1),
                        "speed-up": round(base / step, 2),
                    }
                )
    return rows


def report_scaling(results: list[dict], a: argparse.Namespace, out: common.Figures) -> None:
    """The N-GPU table and, per variant and kind, the first N at which the rank's share fits resident."""
    print(
        f"\nData parallel over N GPUs (S4 train, {S4_TRAIN_ROWS} rows; global batch {BATCH}; free per GPU = "
        f"memory - {OVERHEAD_GIB:.0f} GiB of frozen models and activations: H100 "
        f"{GPU_GB['H100'] * 1e9 / 2**30 - OVERHEAD_GIB:.0f} GiB, H200 {H200_FREE_GIB} GiB; compute at "
        f"{a.efficiency:g} x {a.h100_tflops:g} / {a.h200_tflops:g} TFLOP/s, HBM {a.h100_hbm_gbs:g} / "
        f"{a.hbm_gbs:g} GB/s; all-reduce: ring, 2(N-1)/N x fp32 trainable bytes at {a.link_gbs:g} GB/s "
        "(NVLink, effective), after the backward; a share that does not fit streams at this machine's "
        "measured rate per rank)\n"
    )
    rows = out.add("scaling", scaling(results, a))
    print(common.markdown(rows, "g"))
    fits = {}
    for r in rows:
        if r["fits"] == "resident":
            fits.setdefault((r["variant"], r["gpu"]), r["N"])
    lines = []
    for r in results:
        for kind in GPU_GB:
            n = fits.get((r["name"], kind))
            lines.append(
                f"{r['label']} on {kind}: "
                + (f"fits resident from N = {n}" if n else f"does not fit resident at N <= {RANKS[-1]}")
            )
    out.add("fits_from", {f"{k[0]}/{k[1]}": v for k, v in fits.items()})
    print("\n" + "\n".join(lines))


# ---------------------------------------------------------------- the tiny CPU epoch


def tiny_epoch(a: argparse.Namespace, tmp: Path) -> None:
    """Data wait share of cached epochs (per reader mode, epochs 1 and 2) and cached vs live on `tiny`."""
    try:
        from bench import bench_train as BT
    except ImportError as e:  # stages.train mid-edit
        print(f"\ntiny CPU epoch not run: bench/bench_train.py does not import ({e})")
        return
    from cache.batches import sources

    log(f"tiny: synthetic {BT.SUBSET}, {a.tiny_videos} videos, extracting (tiny preset, CPU)")
    BT.prepare(tmp, a.tiny_videos, a.late_block)
    print(
        f"\ntiny preset, synthetic {BT.SUBSET}, {a.tiny_videos} videos, CPU, {torch.get_num_threads()} "
        f"threads, batch {BATCH}"
    )
    print("| head | reader | epoch | s/epoch | data wait s | data wait share |")
    print("|---|---|---|---|---|---|")
    notes = []
    for name, fields in BT.heads(a.late_block).items():
        cfg, feats, run = BT.setup(tmp, fields)
        srcs = sources([run.model], feats.groups)
        cpu = torch.device("cpu")
        first = None
        cached_s = {}
        for mode in ("streaming", "resident"):
            if has_open_reader():
                lab, epoch_fn = open_new(cfg.store, cfg.subset, "train", srcs, mode, cfg.seed)
                lab = f"{new_reader()[1]}, {mode}"
            elif mode == "streaming":
                ds = BT.open_batches(cfg, "train", srcs, True, BATCH)
                lab, epoch_fn = "FeatureBatches + prefetch", lambda e, ds=ds: prefetch(ds, e)
            else:
                print(f"| {name} | resident: none (today's reader only streams) | | | | |")
                continue
            if first is None:  # one warm-up step (allocations, first-call costs), then FLOPs of a step
                first = to_device(next(iter(epoch_fn(0))), cpu)
                BT.train_step(run, first)
            for e in (0, 1):
                t = time.perf_counter()
                wait = 0.0
                it = iter(epoch_fn(e))
                while True:
                    w = time.perf_counter()
                    b = next(it, None)
                    wait += time.perf_counter() - w
                    if b is None:
                        break
                    BT.train_step(run, to_device(b, cpu))
                secs = time.perf_counter() - t
                cached_s[(mode, e)] = secs
                print(f"| {name} | {lab} | {e + 1} | {secs:.2f} | {wait:.2f} | {wait / secs:.0%} |")
        flops_cached = BT._flops(lambda run=run, first=first: BT.train_step(run, first))
        raw = next(BT.raw_batches(tmp, feats))
        flops_live = BT._flops(lambda feats=feats: next(BT.raw_batches(tmp, feats))) + BT._flops(
            lambda run=run, raw=raw: BT.live_step(run, *raw)
        )
        t = time.perf_counter()
        for b in BT.raw_batches(tmp, feats):
            BT.live_step(run, *b)
        live = time.perf_counter() - t
        bound = flops_live / flops_cached
        (ref_mode, ref_e), ref = min(cached_s.items(), key=lambda kv: kv[1])  # least disturbed by others
        notes.append(
            f"{name}: live epoch {live:.2f} s vs the fastest cached epoch ({ref_mode}, epoch {ref_e + 1}) "
            f"{ref:.2f} s: speed-up "
            f"{live / ref:.2f}x against a FLOP bound of {bound:.2f}x ({live / ref / bound:.0%} of it reached)"
        )
    print("\n".join(["", *notes]))


def main(argv: list[str] | None = None) -> None:
    """Paper-size table and verdicts, then the tiny CPU epoch."""
    ap = common.parser(__doc__, threads=2)
    ap.add_argument("--rows", type=int, default=64, help="paper-shaped rows written per variant")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {list(VARIANTS)}")
    ap.add_argument("--skip-tiny", action="store_true", help="skip the tiny CPU epoch")
    ap.add_argument("--h200-tflops", type=float, default=990.0, help="dense bf16 peak")
    ap.add_argument("--efficiency", type=float, default=0.4, help="share of the peak a step reaches")
    ap.add_argument("--hbm-gbs", type=float, default=4800.0, help="HBM bandwidth, GB/s")
    ap.add_argument("--h100-tflops", type=float, default=989.0, help="H100 SXM dense bf16 peak")
    ap.add_argument("--h100-hbm-gbs", type=float, default=3350.0, help="H100 HBM bandwidth, GB/s")
    ap.add_argument("--link-gbs", type=float, default=450.0, help="effective all-reduce bandwidth, GB/s")
    ap.add_argument("--block-rows", type=int, default=DEFAULT_BLOCK_ROWS, help="rows per store block")
    ap.add_argument("--tiny-videos", type=int, default=16)
    ap.add_argument("--late-block", type=int, default=5, help="first adapted block of the tiny head")
    a = common.parse(ap, argv)
    names = [n.strip() for n in a.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    with common.Figures(a.json) as out:
        run(a, names, out)


def run(a: argparse.Namespace, names: list[str], out: common.Figures) -> None:
    """The header line, the variants, their table, then the tiny epoch."""
    fn, where = new_reader()
    reader = where if fn else f"cache.batches.FeatureBatches + prefetch ({where})"
    print(
        f"paper_scale, started {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} "
        f"({os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, load average "
        f"{os.getloadavg()[0]:.1f}: other processes share the CPUs); reader measured: {reader}",
        flush=True,
    )
    tmp = Path(tempfile.mkdtemp(prefix="av2t-paper-scale-"))
    try:
        results = out.add("variants", [paper_variant(n, a, tmp) for n in names])
        report_paper(results, a)
        report_scaling(results, a, out)
        if not a.skip_tiny:
            (tmp / "tiny").mkdir()
            tiny_epoch(a, tmp / "tiny")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log("done")


if __name__ == "__main__":
    main()
