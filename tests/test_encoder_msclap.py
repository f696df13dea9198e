"""MS-CLAP 2023 audio encoder: msclap's own classes as the reference, the official container, tiny variant."""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from pydantic import ValidationError

from cache import FeatureStore, fingerprint
from pipeline.checkpoints import CheckpointError, read_key_listing
from pipeline.data.audio import load_segments
from pipeline.data.clips import read_clips
from pipeline.data.synth import write_synthetic
from pipeline.encoders import msclap_audio as ma
from pipeline.encoders.registry import build_encoder
from pipeline.presets import encoder_config, preset_dir
from stages.extract import ExtractConfig, extract

REF = Path(__file__).parent / "reference"
# Produced by `write_listing()` below: msclap 1.3.4's own CLAP, built the way CLAPWrapper.load_clap builds
# it from config_2023.yml, with its GPT-2 text tower built from a local GPT2Config() on the meta device
# (no download), state_dict() order; see tests/reference/README.md.
LISTING = REF / "msclap_2023.keys.tsv"
PAPER_FILE = Path("msclap") / "CLAP_weights_2023.pth"  # the paper-official preset's weights entry
TINY = {
    "htsat": {"embed_dim": 32, "depths": [1, 1, 1, 1], "num_heads": [1, 2, 4, 8], "num_classes": 16},
    "d_proj": 64,
}


# The arguments CLAPWrapper.load_clap gives msclap's CLAP, each from the config_2023.yml entry of the same name
# except where renamed here.
LOAD_CLAP_ARGS = (
    "audioenc_name",
    "sample_rate",
    "window_size",
    "hop_size",
    "mel_bins",
    "fmin",
    "fmax",
    "classes_num",
    "out_emb",
    "text_model",
    "transformer_embed_dim",
    "d_proj",
)
LOAD_CLAP_RENAMES = {"sample_rate": "sampling_rate", "classes_num": "num_classes"}


def config_2023() -> dict:
    """msclap's configs/config_2023.yml, as CLAPWrapper reads it."""
    return yaml.safe_load((ma.msclap_dir() / "configs" / "config_2023.yml").read_text())


def msclap_clap_2023() -> torch.nn.Module:
    """msclap's own `CLAP`, built with exactly the arguments CLAPWrapper.load_clap passes from config_2023.yml.

    Its TextEncoder calls `AutoModel.from_pretrained('gpt2')` (a hub download); here that one call builds
    GPT-2 from a local `GPT2Config()` (= the 'gpt2' config) on the meta device instead. The audio side is
    msclap's real code on the CPU.
    """
    from transformers import GPT2Config, GPT2Model

    clap_mod = ma.msclap_models("clap")
    args = config_2023()

    def local_gpt2(name: str):
        assert name == args["text_model"] == "gpt2"
        with torch.device("meta"):
            return GPT2Model(GPT2Config())

    saved = clap_mod.AutoModel
    clap_mod.AutoModel = types.SimpleNamespace(from_pretrained=local_gpt2)
    try:
        return clap_mod.CLAP(**{arg: args[LOAD_CLAP_RENAMES.get(arg, arg)] for arg in LOAD_CLAP_ARGS}).eval()
    finally:
        clap_mod.AutoModel = saved


def listing_lines(module: torch.nn.Module) -> list[str]:
    """`key<TAB>shape<TAB>dtype` lines of a module's state dict."""
    return [
        f"{k}\t{'x'.join(map(str, v.shape)) if v.dim() else '()'}\t{str(v.dtype).removeprefix('torch.')}"
        for k, v in module.state_dict().items()
    ]


def write_listing(path: Path = LISTING) -> None:
    """(Re)write tests/reference/msclap_2023.keys.tsv from msclap's own CLAP."""
    path.write_text("\n".join(listing_lines(msclap_clap_2023())) + "\n")


def wrapper_audio_embeddings(clap: torch.nn.Module, segments: np.ndarray) -> np.ndarray:
    """What the reference gets per file: CLAPWrapper.preprocess_a_audio stacks the segments as (B, 1, L),
    CLAPWrapper._get_audio_embeddings reshapes to (B, L) and returns clap.audio_encoder(x)[0] (no_grad)."""
    pre = torch.from_numpy(segments).reshape(len(segments), 1, -1)
    with torch.no_grad():
        pre = pre.reshape(pre.shape[0], pre.shape[2])
        return clap.audio_encoder(pre)[0].numpy()


def legacy_gpt2_buffers() -> dict[str, torch.Tensor]:
    """GPT-2's attn.bias / attn.masked_bias buffers, persistent in the transformers of 2023: the released file
    holds them (microsoft/CLAP#27; why msclap loads with strict=False). Text side, so unused by us."""
    tril = torch.ones((), dtype=torch.bool).expand(1, 1, 1024, 1024)  # values irrelevant: stride-0, tiny file
    out = {}
    for i in range(12):
        out[f"caption_encoder.base.h.{i}.attn.bias"] = tril
        out[f"caption_encoder.base.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    return out


def cheap_state(rows, audio: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The listed names/shapes/dtypes (entry i the constant i+1, stride-0 views: tiny files), with `audio`
    values where given, plus the legacy GPT-2 buffers."""
    sd = {k: torch.full((), i + 1, dtype=dt).expand(shape) for i, (k, shape, dt) in enumerate(rows)}
    for k, v in (audio or {}).items():
        sd[k] = v.clone()
    return {**sd, **legacy_gpt2_buffers()}


def official_file(tmp_path: Path, sd: dict[str, torch.Tensor]) -> Path:
    """sd saved as msclap's container, `{'model': state_dict}`, where the paper-official preset looks."""
    path = tmp_path / PAPER_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": sd}, path)
    return path


def tones(freq: float, n: int, seconds: float = 1.0, noise: float = 0.05, seed: int = 0) -> np.ndarray:
    """(n, seconds * 44100) float32 sine segments plus white noise."""
    t = np.arange(int(seconds * ma.SAMPLE_RATE)) / ma.SAMPLE_RATE
    rng = np.random.default_rng(seed)
    x = 0.5 * np.sin(2 * np.pi * freq * t) + noise * rng.standard_normal((n, len(t)))
    return x.astype(np.float32)


def tiny_preset(tmp_path: Path, **clap) -> Path:
    """The tiny preset folder with its clap.json swapped for a tiny msclap encoder."""
    d = tmp_path / "tiny-msclap"
    shutil.copytree(preset_dir("tiny"), d)
    (d / "clap.json").write_text(json.dumps({"impl": "msclap_audio", **TINY, **clap}))
    return d


@pytest.fixture(scope="module")
def tiny() -> ma.MsclapAudioEncoder:
    return ma.build(ma.Config.model_validate(TINY))


@pytest.fixture(scope="module")
def paper_random() -> ma.MsclapAudioEncoder:
    """The full-size 2023 audio encoder with seeded random weights (never loaded into)."""
    return ma.build(ma.Config())


@pytest.fixture(scope="module")
def clap_2023() -> torch.nn.Module:
    return msclap_clap_2023()


# --- importing msclap -------------------------------------------------------------------------------------


def test_msclap_models_load_without_the_package_init():
    clap_mod = ma.msclap_models("clap")
    assert clap_mod.__name__ == "msclap.models.clap"
    assert ma.msclap_models("htsat").HTSATWrapper is ma.msclap_models("audio").get_audio_encoder("HTSAT")
    if "torchaudio" not in sys.modules:  # our torch has none: msclap's __init__ (CLAPWrapper) never ran
        assert "msclap.CLAPWrapper" not in sys.modules
        with pytest.raises(AttributeError, match="torchaudio"):
            sys.modules["msclap"].CLAP  # noqa: B018


def test_config_2023_is_msclaps():
    args = config_2023()
    for k, v in ma.CONFIG_2023.items():
        assert args[k] == v, k
    assert args["text_model"] == "gpt2" and args["duration"] == 7  # duration: unused by the reference's path


# --- tiny variant -----------------------------------------------------------------------------------------


def test_tiny_outputs_shapes_finite_deterministic(tiny):
    x = tones(440, 4)
    y = tiny.encode(tiny.preprocess(x))["clap"]
    assert tiny.output_shapes() == {"clap": (64,)} and tuple(y.shape) == (4, 64)
    assert torch.isfinite(y).all() and y.norm(dim=-1).std() > 0  # not normalised, like msclap's output
    again = ma.build(ma.Config.model_validate(TINY))
    assert again.weights_digest() == tiny.weights_digest()
    assert torch.equal(again.encode(again.preprocess(x))["clap"], y)
    # Batch-independent (eval BatchNorm, per-row front end): one row alone gives the same vector.
    torch.testing.assert_close(tiny.encode(tiny.preprocess(x[1:2]))["clap"][0], y[1], atol=1e-5, rtol=0)
    # A flattened stereo segment is twice as long; msclap takes it as it is.
    assert tuple(tiny.encode(tiny.preprocess(tones(440, 2, seconds=2.0)))["clap"].shape) == (2, 64)
    prov = tiny.provenance()
    assert prov["encoder"] == "clap" and prov["implementation"] == "msclap_audio"
    assert prov["config"]["mel_frontend"] == {
        "sample_rate": 32000,  # msclap's HTSAT config, not config_2023.yml's 44.1 kHz
        "window_size": 1024,
        "hop_size": 320,
        "mel_bins": 64,
        "fmin": 50,
        "fmax": 14000,
    }
    assert prov["preprocessing"]["sample_rate"] == 44_100 and prov["versions"]["msclap"] == "1.3.4"
    with pytest.raises(ValueError, match="expected float32 audio"):
        tiny.preprocess(np.zeros(44_100, np.float32))


def test_tiny_random_weights_separate_tones(tiny):
    def emb(freq, seed):
        return torch.nn.functional.normalize(tiny.encode(tiny.preprocess(tones(freq, 2, seed=seed)))["clap"])

    a, a2, b = emb(440, 1), emb(440, 2), emb(2500, 3)
    same, diff = 1 - (a * a2).sum(-1), 1 - (a * b).sum(-1)
    assert diff.min() > 10 * same.max(), (same, diff)


def test_config_validation():
    with pytest.raises(ValidationError):
        ma.Config.model_validate({**TINY, "unknown": 1})
    with pytest.raises(ValidationError, match="not divisible"):
        ma.Config(htsat={"embed_dim": 30, "depths": [1, 1], "num_heads": [4, 4]})
    with pytest.raises(ValidationError):
        ma.Config(stereo="interleave")
    with pytest.raises(ValidationError):
        ma.Config(version="2022")


# --- presets and the registry -----------------------------------------------------------------------------


def test_preset_picks_the_implementation_and_fingerprints_differ(tmp_path):
    raw = encoder_config("paper-official", "clap")
    assert raw["impl"] == "msclap_audio" and raw["weights"] == str(PAPER_FILE)
    cfg = ma.Config.model_validate({k: v for k, v in raw.items() if k != "impl"})
    assert (cfg.htsat, cfg.d_proj, cfg.stereo, cfg.resampler) == (None, 1024, "flatten", "sinc_hann")
    for name in ("beit3", "clip", "gt", "head", "train"):  # everything else is the paper preset
        assert encoder_config("paper-official", name) == encoder_config("paper", name), name
    # but SAM 2's input is prepared as the reference's data loader does
    assert encoder_config("paper-official", "sam2") == encoder_config("paper", "sam2") | {"resize": "sam1"}
    for preset in ("paper", "tiny"):
        assert encoder_config(preset, "clap").get("stereo", "mean") == "mean"

    folder = tiny_preset(tmp_path)
    ours = build_encoder("clap", folder)
    laion = build_encoder("clap", "tiny")
    assert isinstance(ours, ma.MsclapAudioEncoder) and ours.name == laion.name == "clap"
    assert ours.output_shapes() == {"clap": (64,)}
    assert fingerprint(ours.provenance()) != fingerprint(laion.provenance())
    flat = build_encoder("clap", folder, overrides={"stereo": "flatten"})
    sinc = build_encoder("clap", folder, overrides={"resampler": "sinc_hann"})
    prints = {fingerprint(e.provenance()) for e in (ours, flat, sinc)}
    assert len(prints) == 3
    assert flat.audio_loading() == {"rate": 44_100, "stereo": "flatten", "resampler": "polyphase"}
    assert laion.audio_loading() == {"rate": 48_000, "stereo": "mean", "resampler": "polyphase"}
    with pytest.raises(ValueError, match="unknown impl"):
        build_encoder("clap", folder, overrides={"impl": "nope"})
    with pytest.raises(ValueError, match="unknown impl"):
        build_encoder("clip", "tiny", overrides={"impl": "msclap_audio"})


def test_extract_loads_audio_the_encoders_way(tmp_path):
    """stereo/resampler reach load_segments: the stereo video's row is a 2-s input, batched apart."""
    root = tmp_path / "tree"
    write_synthetic(root, "s4", videos=4, seed=5)  # train: a mono video, then a stereo one (frame 1 each)
    clips = read_clips(root, "s4", "train")
    assert [sf.info(str(c.audio_path)).channels for c in clips] == [1, 2]
    folder = tiny_preset(tmp_path, stereo="flatten", resampler="sinc_hann")
    store = tmp_path / "s.zarr"
    cfg = ExtractConfig(
        root=root, store=str(store), device="cpu", encoders=["clap"], splits=["train"], preset=str(folder),
        dtype="float32",
    )  # fmt: skip
    out = extract(cfg, progress=False)
    assert out["failures"] == [] and out["computed"] == 2
    e = FeatureStore(str(store), mode="r").split("s4", "train").encoder("clap")
    assert e.provenance["preprocessing"]["stereo"] == "flatten"
    got = e.array("clap")[:]
    enc = build_encoder("clap", folder)
    segs = [load_segments(c.audio_path, 44_100, stereo="flatten", resampler="sinc_hann")[0] for c in clips]
    assert [len(x) for x in segs] == [44_100, 88_200]
    for row, seg in zip(got, segs, strict=True):
        want = enc.encode(enc.preprocess(seg[None]))["clap"].numpy()[0]
        np.testing.assert_allclose(row, want, atol=1e-5, rtol=0)


# --- the 2023 model and its checkpoint --------------------------------------------------------------------


def test_listing_is_msclaps_own_clap(clap_2023):
    assert listing_lines(clap_2023) == LISTING.read_text().splitlines()


def test_paper_architecture_matches_the_listing(paper_random):
    rows = read_key_listing(LISTING)
    want = {k: (shape, dt) for k, shape, dt in rows if k.startswith(ma.AUDIO_PREFIX)}
    own = {k: (tuple(v.shape), v.dtype) for k, v in paper_random.state_dict().items()}
    assert own == want
    unused = {k for k, _, _ in rows if not k.startswith(ma.AUDIO_PREFIX)}
    assert unused == {k for k in unused if k.startswith(ma.TEXT_PREFIX)} | ma.UNUSED_KEYS
    assert paper_random.output_shapes() == {"clap": (1024,)}
    assert paper_random.config_dict()["htsat"]["depths"] == [2, 2, 6, 2]


def test_paper_official_loads_the_official_container_strictly(tmp_path, clap_2023):
    rows = read_key_listing(LISTING)
    sd = cheap_state(rows)
    path = official_file(tmp_path, sd)
    enc = build_encoder("clap", "paper-official", weights_dir=tmp_path)
    loaded = enc.state_dict()
    assert set(loaded) == {k for k, _, _ in rows if k.startswith(ma.AUDIO_PREFIX)}
    for k, v in loaded.items():
        assert torch.equal(v, sd[k]), k
    assert (enc.stereo, enc.resampler, enc.sample_rate) == ("flatten", "sinc_hann", 44_100)
    # The same file is what msclap's own loader takes (torch.load(path)['model'] into CLAP, strict=False):
    # nothing of CLAP is missing, and the only extras are the legacy GPT-2 buffers.
    file_keys, clap_keys = set(torch.load(path, weights_only=True)["model"]), set(clap_2023.state_dict())
    assert clap_keys <= file_keys and file_keys - clap_keys == set(legacy_gpt2_buffers())


@pytest.mark.slow
def test_paper_equals_msclaps_audio_path_on_the_same_weights(tmp_path, clap_2023, paper_random):
    """Our encoder, loaded from an official-format file, against msclap's CLAP called as CLAPWrapper does."""
    audio = paper_random.state_dict()
    official_file(tmp_path, cheap_state(read_key_listing(LISTING), {k: v for k, v in audio.items()}))
    enc = build_encoder("clap", "paper-official", weights_dir=tmp_path)
    clap_2023.audio_encoder.load_state_dict({k.removeprefix(ma.AUDIO_PREFIX): v for k, v in audio.items()})
    x = np.concatenate([tones(440, 1), tones(2500, 1, noise=0.3, seed=4)])
    want = wrapper_audio_embeddings(clap_2023, x)
    got = enc.encode(enc.preprocess(x))["clap"].numpy()
    assert got.shape == want.shape == (2, 1024)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_wrong_and_missing_keys_fail_naming_file_and_keys(tmp_path):
    sd = cheap_state(read_key_listing(LISTING))
    del sd["audio_encoder.projection.layer_norm.bias"]
    sd["audio_encoder.base.htsat.extra.weight"] = torch.zeros(3)
    path = official_file(tmp_path, sd)
    with pytest.raises(CheckpointError) as e:
        build_encoder("clap", "paper-official", weights_dir=tmp_path)
    msg = str(e.value)
    assert str(path) in msg
    assert (
        "audio_encoder.projection.layer_norm.bias" in msg and "audio_encoder.base.htsat.extra.weight" in msg
    )

    sd = cheap_state(read_key_listing(LISTING))
    sd["module.audio_encoder.projection.linear1.weight"] = torch.zeros(3)  # neither audio nor text
    official_file(tmp_path, sd)
    with pytest.raises(CheckpointError, match=r"neither msclap's audio encoder.*module\.audio_encoder"):
        build_encoder("clap", "paper-official", weights_dir=tmp_path)

    torch.save(cheap_state(read_key_listing(LISTING)), path)  # a bare state dict: not msclap's container
    with pytest.raises(CheckpointError, match=r"not an msclap checkpoint.*'model'"):
        build_encoder("clap", "paper-official", weights_dir=tmp_path)


def test_missing_weights_file_says_where_to_put_it(tmp_path):
    with pytest.raises(CheckpointError) as e:
        build_encoder("clap", "paper-official", weights_dir=tmp_path)
    msg = str(e.value)
    assert str(tmp_path / PAPER_FILE) in msg
    assert "not found" in msg and "microsoft/msclap" in msg and "CLAP_weights_2023.pth" in msg


def test_rows_batched_apart_by_shape_are_stored_in_row_order(tmp_path):
    """A stereo video between mono ones: its 2-s rows are batched after the mono rows, and still each row
    holds its own segment's embedding."""
    root = tmp_path / "tree"
    write_synthetic(root, "ms3", videos=6, seed=5)
    clips = read_clips(root, "ms3", "train")
    channels = [sf.info(str(c.audio_path)).channels for c in clips]
    assert channels[0] == 1 and 2 in channels[1:-1] and channels[-1] == 1  # stereo rows precede mono ones
    folder = tiny_preset(tmp_path, stereo="flatten")
    store = tmp_path / "s.zarr"
    cfg = ExtractConfig(
        root=root, subset="ms3", store=str(store), device="cpu", encoders=["clap"], splits=["train"],
        preset=str(folder), dtype="float32",
    )  # fmt: skip
    extract(cfg, progress=False)
    got = FeatureStore(str(store), mode="r").split("ms3", "train").encoder("clap").array("clap")[:]
    enc = build_encoder("clap", folder)
    want = [enc.encode(enc.preprocess(seg[None]))["clap"].numpy()[0] for c in clips
            for seg in load_segments(c.audio_path, 44_100, stereo="flatten")]  # fmt: skip
    np.testing.assert_allclose(got, np.stack(want), atol=1e-5, rtol=0)
