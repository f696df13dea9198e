"""Ref-AVS features: per-video features once, per-expression text tokens and masks; a new expression of a known
video computes only its own rows."""

from __future__ import annotations

import csv

import numpy as np

from cache.expressions import read_feature, read_table
from cache.store import FeatureStore
from pipeline.data.synth import write_synthetic
from pipeline.encoders.text_tokens import BOS, EOS, PAD, UNK, TextConfig, WordTokenizer, tokenizer_fingerprint
from pipeline.settings import ExtractConfig
from stages.extract import extract


def test_word_tokenizer():
    tok = WordTokenizer(TextConfig(max_len=6))
    ids, lengths = tok.encode(["The red disc.", "the object that is silent on the left", "zebra"])
    assert ids[0].tolist()[:5] == [BOS, tok.vocab["the"], tok.vocab["red"], tok.vocab["disc"], EOS]
    assert ids[0, 5] == PAD and lengths.tolist() == [5, 6, 3]
    assert ids[1, -1] == EOS  # cut to max_len, </s> kept
    assert ids[2].tolist()[:3] == [BOS, UNK, EOS]
    assert tok.vocab_size <= 64  # the tiny BEiT-3's word table
    assert tokenizer_fingerprint(tok) == tokenizer_fingerprint(WordTokenizer(TextConfig(max_len=6)))
    assert tokenizer_fingerprint(tok) != tokenizer_fingerprint(WordTokenizer(TextConfig(max_len=7)))


def test_second_expression_computes_only_its_rows(tmp_path):
    root, store = tmp_path / "ra", str(tmp_path / "store.zarr")
    write_synthetic(root, "ref-avs", videos=5, seed=1)
    cfg = ExtractConfig(
        root=root, subset="ref-avs", store=store, encoders=["beit3"], splits=["train"], threads=1
    )
    first = extract(cfg, progress=False)
    assert first["computed"] == 10  # one train video, ten frames
    info = first["expressions"]["train"]
    assert len(info["tokens_computed"]) == info["expressions"] == len(info["added"]) >= 3
    rows = list(csv.reader((root / "metadata.csv").open()))
    vid, fid = next(r for r in rows if r[2] == "train")[0], next(r for r in rows if r[2] == "train")[3]
    rows.append([vid, f"{vid}_extra_1", "train", fid, "the red disc"])
    with (root / "metadata.csv").open("w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)
    again = extract(cfg, progress=False)
    assert again["computed"] == 0  # per-video features are not recomputed
    assert again["expressions"]["train"]["tokens_computed"] == [f"{vid}_extra_1"]
    assert again["expressions"]["train"]["masks_computed"] == [f"{vid}_extra_1"]
    group = FeatureStore(store, mode="r").split("ref-avs", "train")
    table = read_table(group)
    assert len(table) == info["expressions"] + 1
    # every expression of the video points at the same ten frame rows: nothing copied
    same = table.frame_rows[table.video == vid]
    assert (same == same[0]).all() and sorted(same[0].tolist()) == list(range(10))
    key = next(k for k in group.group["expressions"] if k.startswith("text-"))
    ids = read_feature(group, key, "ids")
    assert ids.shape[0] == len(table) and (ids[:, 0] == BOS).all()
    mkey = next(k for k in group.group["expressions"] if k.startswith("gt-"))
    masks = read_feature(group, mkey, "mask", np.array([len(table) - 1]))
    assert masks.shape == (1, 10, 256, 256)
