"""The commands that fix a store error (flows.store_hints): cache/ says the facts, `av2t` names the commands.

- the messages of cache/'s store modules name no command and no option;
- every command built from a store's facts parses with the real `av2t` parser, to the settings recorded;
- each hint of a StoreError reaches the `av2t` line (flows.errors.one_line), and StoreDamaged survives pickling.
"""

from __future__ import annotations

import ast
import pickle
import re
import shlex
from pathlib import Path

import pytest
from store_helpers import ARRAYS, PROVENANCE, block_data, make_index

from cache import FeatureStore, FingerprintMismatch, StoreDamaged, StoreError
from flows.cli import build_parser
from flows.errors import one_line
from flows.options import values
from flows.settings import ExtractFlowSettings
from flows.store_hints import extract_commands, store_message

ROOT = Path(__file__).resolve().parents[1]
STORE_MODULES = ("errors", "specs", "shards", "store", "verify", "info")
COMMAND = re.compile(r"\bav2t [a-z]|(^|\s|`)--[a-z]")


@pytest.mark.parametrize("name", STORE_MODULES)
def test_store_messages_name_no_command(name):
    """String constants (docstrings aside) of the store's modules hold no `av2t ...` and no `--option`."""
    tree = ast.parse((ROOT / "cache" / f"{name}.py").read_text())
    docstrings = {
        id(n.body[0].value)
        for n in ast.walk(tree)
        if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
        and n.body
        and isinstance(n.body[0], ast.Expr)
        and isinstance(n.body[0].value, ast.Constant)
    }
    found = [
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
        if COMMAND.search(n.value)
    ]
    assert not found, f"cache/{name}.py names commands (build them in flows.store_hints): {found}"


def _parsed(command: str) -> ExtractFlowSettings:
    argv = shlex.split(command)
    assert argv[:2] == ["av2t", "extract"], command
    ns = build_parser().parse_args(argv[1:])
    return ExtractFlowSettings.model_validate(values(ns, ExtractFlowSettings))


def _damaged_store(tmp_path, arrays=ARRAYS, given=None, dtype_arrays=None):
    url = str(tmp_path / "s.zarr")
    g = FeatureStore(url).require_split("s4", "test", make_index(), 4)
    enc = g.require_encoder("fake", PROVENANCE, arrays, extracted_with=given)
    for b in range(enc.split.n_blocks):
        enc.write_block(b, block_data(enc, b))
    (chunk,) = [p for p in (tmp_path / "s.zarr").glob("s4/test/encoders/*/emb/c/1/*")]
    chunk.unlink()
    return url, FeatureStore(url, mode="r").split("s4", "test").encoder("fake")


def test_the_reextract_commands_parse_with_the_cli_to_the_recorded_settings(tmp_path):
    given = {"root": "/data/AVS bench", "preset": "paper"}
    url, enc = _damaged_store(tmp_path, given=given)
    settings = dict(enc.extract_settings())
    assert settings["codec"] == "blosc-lz4" and settings["root"] == "/data/AVS bench"
    with pytest.raises(StoreDamaged) as e:
        enc.read("emb", slice(0, enc.split.n_rows))
    (command,) = extract_commands(e.value.damage)
    s = _parsed(command)
    assert (s.store, s.subset, s.splits, s.encoders) == (url, "s4", ["test"], ["fake"])
    assert (str(s.root), s.preset, s.codec) == ("/data/AVS bench", "paper", "blosc-lz4")
    # every setting the store can record becomes its option
    every = (
        ("dtype", "float32"),
        ("quantize", "int8"),
        ("codec", "zstd"),
        ("frames", "all"),
        ("allow_other_fingerprints", True),
        ("root", "/r"),
        ("preset", "tiny"),
    )
    damage = [e.value.damage[0].__class__(**{**e.value.damage[0].__dict__, "options": every})]
    s = _parsed(extract_commands(damage)[0])
    assert (s.dtype, s.quantize, s.codec, s.frames, s.allow_other_fingerprints) == (
        "float32",
        "int8",
        "zstd",
        "all",
        True,
    )


def test_a_readers_damage_says_the_fix_in_words_and_av2t_names_the_commands(tmp_path):
    url, enc = _damaged_store(tmp_path)
    with pytest.raises(StoreDamaged) as e:
        enc.read("emb", slice(0, enc.split.n_rows))
    plain, said = str(e.value), one_line(e.value)
    assert "repair" in plain and "av2t" not in plain
    assert f"av2t cache verify {url} --repair" in said and f"av2t extract --store {url}" in said
    assert e.value.damage[0].line() in said
    again = pickle.loads(pickle.dumps(e.value))
    assert again.damage == e.value.damage and str(again) == plain


def test_each_hint_reaches_the_av2t_line(tmp_path):
    url = str(tmp_path / "h.zarr")
    g = FeatureStore(url).require_split("s4", "test", make_index(), 4)
    with pytest.raises(StoreError) as e:
        g.encoder("clip")
    assert "add clip to the encoders you extract" in str(e.value) and "av2t" not in str(e.value)
    assert f"av2t extract --store {url} --subset s4 --splits test --encoders clip" in one_line(e.value)
    g.require_encoder("fake", PROVENANCE, ARRAYS)
    with pytest.raises(FingerprintMismatch) as e:
        g.require_encoder("fake", {**PROVENANCE, "weights": "sha256:1"}, ARRAYS)
    assert "--allow-other-fingerprints" not in str(e.value)
    assert "allow a second fingerprint side by side (--allow-other-fingerprints)." in one_line(e.value)
    cut = StoreError(f"{url}: group s4/test is incomplete", "extract-again", store=url)
    assert f"run `av2t extract --store {url}`" in store_message(cut)
    assert store_message(StoreError("plain")) == "plain"
