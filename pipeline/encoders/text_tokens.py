"""Text tokens of referring expressions (Ref-AVS): BEiT-3's own tokenizer for the paper preset, a tiny word-level
one for the tiny preset. Tokens are cached per expression, fingerprinted like every encoder's features.

Both follow XLM-RoBERTa's conventions, which EVF-SAM's BEiT-3 tokenizer (XLMRobertaTokenizer over beit3.spm) has:
<s> = 0, <pad> = 1, </s> = 2, <unk> = 3; a sequence is <s> tokens </s>, cut to max_len (</s> kept) and right-
padded with <pad>; `length` counts the real tokens. EVF-SAM feeds the unpadded ids (one prompt at a time) with
no padding mask: a head reads the first `length` tokens.

- words (tiny): lower-cased words of [a-z]+, ids from a fixed vocabulary of the synthetic scenes' words (4 + the
  words below, within the tiny BEiT-3's 64-word table); other words are <unk>.
- beit3 (paper): transformers' AutoTokenizer over the local folder `files` (under the weights folder), the
  EVF-SAM checkpoint folder that ships the tokenizer files (sentencepiece.bpe.model / tokenizer_config.json);
  local files only, never a hub. Needs sentencepiece (or a tokenizer.json) like EVF-SAM does.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pipeline.provenance import fingerprint, package_versions

BOS, PAD, EOS, UNK = 0, 1, 2, 3
WORDS: tuple[str, ...] = (
    "the", "a", "an", "object", "one", "that", "which", "is", "sounds", "sound", "sounding", "makes", "making",
    "silent", "quiet", "on", "of", "in", "left", "right", "top", "bottom", "middle",
    "red", "yellow", "green", "blue", "purple", "cyan", "orange", "white", "black",
    "disc", "square", "triangle", "ring", "diamond", "cross",
)  # fmt: skip


class TextConfig(BaseModel):
    """A preset's text.json."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["words", "beit3"] = "words"
    max_len: int = Field(12, ge=3, description="tokens per expression, <s> and </s> included")
    files: str | None = Field(None, description="beit3: the tokenizer folder under the weights folder")


class TextTokenizer(Protocol):
    name: str

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]: ...

    def provenance(self) -> dict[str, Any]: ...


def _pack(pieces: list[list[int]], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, max_len) int32 ids '<s> ... </s>' right-padded, and (n,) int16 lengths."""
    ids = np.full((len(pieces), max_len), PAD, dtype=np.int32)
    lengths = np.zeros(len(pieces), dtype=np.int16)
    for i, p in enumerate(pieces):
        seq = [BOS, *p[: max_len - 2], EOS]
        ids[i, : len(seq)] = seq
        lengths[i] = len(seq)
    return ids, lengths


class WordTokenizer:
    """The tiny preset's tokenizer: a fixed word table."""

    name = "text"

    def __init__(self, cfg: TextConfig):
        self.cfg = cfg
        self.vocab = {w: i + 4 for i, w in enumerate(WORDS)}

    @property
    def vocab_size(self) -> int:
        return 4 + len(WORDS)

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Ids and lengths of each text."""
        words = [re.findall(r"[a-z]+", t.lower()) for t in texts]
        return _pack([[self.vocab.get(w, UNK) for w in ws] for ws in words], self.cfg.max_len)

    def provenance(self) -> dict[str, Any]:
        return {"tokenizer": "words", "config": self.cfg.model_dump(), "vocab": list(WORDS)}


class Beit3Tokenizer:
    """BEiT-3's XLM-R sentencepiece tokenizer, as EVF-SAM loads it, from local files."""

    name = "text"

    def __init__(self, cfg: TextConfig, folder: Path):
        from transformers import AutoTokenizer  # only for the paper preset

        if not folder.is_dir():
            raise FileNotFoundError(
                f"{folder}: BEiT-3 tokenizer folder not found (the EVF-SAM checkpoint folder, holding "
                "sentencepiece.bpe.model and tokenizer_config.json)"
            )
        self.cfg, self.folder = cfg, folder
        self.tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        pieces = [self.tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        return _pack(pieces, self.cfg.max_len)

    def provenance(self) -> dict[str, Any]:
        files = sorted(
            p for p in self.folder.iterdir() if p.is_file() and ("token" in p.name or p.suffix == ".model")
        )
        digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:16] for p in files}
        return {
            "tokenizer": "beit3",
            "config": self.cfg.model_dump(),
            "files": digests,
            "versions": package_versions("transformers", "tokenizers", "sentencepiece"),
        }


def load_tokenizer(preset: str | Path, weights_dir: Path | None = None) -> TextTokenizer:
    """The preset's text tokenizer (text.json; the tiny one when a preset has none)."""
    from pipeline.presets import preset_file

    path = preset_file(preset, "text.json")
    cfg = TextConfig(**json.loads(path.read_text())) if path is not None else TextConfig()
    if cfg.kind == "words":
        return WordTokenizer(cfg)
    folder = Path(weights_dir or "weights") / (cfg.files or "")
    return Beit3Tokenizer(cfg, folder)


def tokenizer_fingerprint(tok: TextTokenizer) -> str:
    """16 hex digits over the tokenizer's provenance."""
    return fingerprint(tok.provenance())
