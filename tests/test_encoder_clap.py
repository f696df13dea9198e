"""CLAP audio encoder: laion-clap's own code path as the reference, official checkpoint formats, tiny preset."""

from __future__ import annotations

import importlib.util
import io
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from pipeline.checkpoints import CheckpointError, read_key_listing
from pipeline.encoders import clap_audio as ca
from pipeline.encoders.registry import build_encoder
from pipeline.presets import encoder_config

REF = Path(__file__).parent / "reference"
TINY_LISTING = REF / "laion_clap_630k-audioset-best_HTSAT-tiny.keys.tsv"
BASE_LISTING = REF / "laion_clap_music_audioset_epoch_15_esc_90.14_HTSAT-base.keys.tsv"


def tones(freq: float, n: int, noise: float = 0.0, seed: int = 0, amp: float = 0.5) -> np.ndarray:
    """(n, 48000) float32 one-second sine segments plus white noise."""
    t = np.arange(ca.SAMPLE_RATE) / ca.SAMPLE_RATE
    rng = np.random.default_rng(seed)
    x = amp * np.sin(2 * np.pi * freq * t) + noise * rng.standard_normal((n, ca.SAMPLE_RATE))
    return x.astype(np.float32)


def paper_cfg(weights: str | None = "laion_clap/630k-audioset-best.pt", **kw) -> ca.Config:
    """The shipped paper preset, with overrides."""
    return ca.Config.model_validate({**encoder_config("paper", "clap"), "weights": weights, **kw})


def training_container(sd: dict[str, torch.Tensor]) -> dict:
    """What LAION's training script saves: DDP keys, epoch/name, an optimizer holding a numpy lr, a scaler."""
    return {
        "epoch": 15,
        "name": "test-run",
        "state_dict": {"module." + k: v for k, v in sd.items()},
        "optimizer": {
            "state": {
                0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2), "exp_avg_sq": torch.zeros(2)}
            },
            # laion_clap.training.scheduler.cosine_lr assigns np.float64 learning rates
            "param_groups": [
                {"lr": np.float64(1e-4) * 0.5, "betas": (0.9, 0.99), "eps": 1e-9, "params": [0]}
            ],
        },
        "scaler": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 7},
    }


def as_numpy1_pickle(path: Path) -> None:
    """Rewrite a torch zip file so its numpy globals carry numpy 1.x module names (the released files')."""
    with zipfile.ZipFile(path) as z:
        entries = [(i, z.read(i)) for i in z.infolist()]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as out:
        for info, data in entries:
            if info.filename.endswith("/data.pkl"):
                assert b"numpy._core.multiarray\n" in data
                data = data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
            out.writestr(info, data)
    path.write_bytes(buf.getvalue())


def cheap_state(rows: list[tuple[str, tuple[int, ...], torch.dtype]]) -> dict[str, torch.Tensor]:
    """The listed names/shapes/dtypes, entry i the constant i+1 (stride-0 views: tiny files), plus the
    transformers-4.30 buffer the released files hold and laion's loader deletes (so not in the listing)."""
    sd = {k: torch.full((), i + 1, dtype=dt).expand(shape) for i, (k, shape, dt) in enumerate(rows)}
    sd["text_branch.embeddings.position_ids"] = torch.arange(514)[None]
    return sd


def is_audio_key(key: str) -> bool:
    """The keys the encoder owns."""
    return not ca._is_text_key(key)


@pytest.fixture(scope="module")
def tiny() -> ca.ClapAudioEncoder:
    return build_encoder("clap", "tiny")


@pytest.fixture(scope="module")
def paper_random() -> ca.ClapAudioEncoder:
    """Full-size HTSAT-tiny CLAP audio tower with seeded random weights (never loaded into)."""
    return ca.build(paper_cfg(weights=None))


@pytest.fixture(scope="module")
def laion():
    """laion_clap imported as its users do. It imports `wget` (only for downloads; not installed here)."""
    if importlib.util.find_spec("wget") is None and "wget" not in sys.modules:
        sys.modules["wget"] = types.ModuleType("wget")
    import laion_clap
    import laion_clap.hook

    # Same module objects as the encoder's: laion_clap's hook uses the top-level clap_module.
    assert laion_clap.hook.create_model is ca.clap_module("factory").create_model
    return laion_clap


def laion_embedding(laion, enc: ca.ClapAudioEncoder, x: np.ndarray) -> np.ndarray:
    """laion-clap's own `CLAP_Module.get_audio_embedding_from_data` run on enc's audio modules."""
    clap_cls = ca.clap_module("model").CLAP
    clap = clap_cls.__new__(clap_cls)  # the audio half of a CLAP: no text tower to download
    nn.Module.__init__(clap)
    clap.audio_branch, clap.audio_projection = enc.audio_branch, enc.audio_projection
    module = types.SimpleNamespace(
        model=clap, enable_fusion=False, model_cfg={"audio_cfg": enc.audio_cfg.model_dump()}
    )
    return laion.CLAP_Module.get_audio_embedding_from_data(module, x)


# --- tiny preset ------------------------------------------------------------------------------------------


def test_tiny_outputs_shapes_finite_normalised_deterministic(tiny):
    x = tones(440, 8, noise=0.05)
    out = tiny.encode(tiny.preprocess(x))
    assert set(out) == set(tiny.output_shapes()) == {"clap"}
    y = out["clap"]
    assert tuple(y.shape) == (8, *tiny.output_shapes()["clap"]) == (8, 64)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.norm(dim=-1), torch.ones(8))
    again = build_encoder("clap", "tiny")
    assert again.weights_digest() == tiny.weights_digest()
    assert torch.equal(again.encode(again.preprocess(x))["clap"], y)
    prov = tiny.provenance()
    assert prov["encoder"] == "clap" and prov["preprocessing"]["data_filling"] == "repeatpad"
    assert prov["config"]["htsat"]["spec_size"] == 256 and prov["config"]["audio_cfg"]["hop_size"] == 480


def test_preprocess_matches_laion(laion, tiny):
    from laion_clap.training.data import float32_to_int16, get_audio_features, int16_to_float32

    x = tones(440, 3, noise=0.6, seed=1, amp=0.9)  # noisy enough to clip at +-1
    assert (np.abs(x) > 1).any()
    np.testing.assert_array_equal(ca.quantize_int16(x), int16_to_float32(float32_to_int16(x)))
    ours = tiny.preprocess(x)
    assert ours.dtype == torch.float32 and tuple(ours.shape) == (3, 480_000)
    for row, got in zip(x, ours, strict=True):
        wav = torch.from_numpy(int16_to_float32(float32_to_int16(row))).float()
        ref = get_audio_features({}, wav, 480_000, "rand_trunc", "repeatpad", tiny.audio_cfg.model_dump())
        assert torch.equal(got, ref["waveform"])
    # A length that does not divide 10 s: whole repeats, then zeros (laion's 'repeatpad').
    odd = x[:, :44_100]
    wav = torch.from_numpy(int16_to_float32(float32_to_int16(odd[0]))).float()
    ref = get_audio_features({}, wav, 480_000, "rand_trunc", "repeatpad", tiny.audio_cfg.model_dump())
    assert torch.equal(tiny.preprocess(odd)[0], ref["waveform"])
    with pytest.raises(ValueError, match="expected 1..480000"):
        tiny.preprocess(np.zeros((1, 480_001), np.float32))


def test_tiny_matches_laion_get_audio_embedding_from_data(laion, tiny):
    x = np.concatenate([tones(440, 2, noise=0.05), tones(3000, 2, noise=0.3, seed=2, amp=1.2)])
    ref = laion_embedding(laion, tiny, x)
    ours = tiny.encode(tiny.preprocess(x))["clap"].numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


def test_tiny_random_weights_separate_tones(tiny):
    def emb(freq, seed):
        return tiny.encode(tiny.preprocess(tones(freq, 2, noise=0.05, seed=seed)))["clap"]

    a, a2, b = emb(440, 1), emb(440, 2), emb(2500, 3)
    same = 1 - (a * a2).sum(-1)  # cosine distance, two noise draws of the same tone
    diff = 1 - (a * b).sum(-1)
    assert diff.min() > 10 * same.max(), (same, diff)


# --- configs and presets ----------------------------------------------------------------------------------


def test_config_validation():
    tiny_raw = encoder_config("tiny", "clap")
    with pytest.raises(ValidationError):
        ca.Config.model_validate({**tiny_raw, "unknown": 1})
    with pytest.raises(ValidationError, match="exactly one"):
        ca.Config.model_validate({**tiny_raw, "amodel": "HTSAT-tiny"})
    with pytest.raises(ValidationError, match="audio_cfg comes from"):
        ca.Config(amodel="HTSAT-tiny", audio_cfg={})
    with pytest.raises(ValidationError, match="not divisible"):
        ca.Config(htsat={"embed_dim": 30, "depths": [1, 1], "num_heads": [4, 4]})
    with pytest.raises(ValidationError):
        ca.Config(htsat={"embed_dim": 32, "depths": [1], "num_heads": [1]}, audio_cfg={"sample_rate": 44100})
    paper = ca.Config.model_validate(encoder_config("paper", "clap"))
    assert paper.amodel == "HTSAT-tiny" and paper.weights == "laion_clap/630k-audioset-best.pt"


def test_missing_weights_file_says_where_to_put_it(tmp_path):
    with pytest.raises(CheckpointError) as e:
        build_encoder("clap", "paper", weights_dir=tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "laion_clap" / "630k-audioset-best.pt") in msg
    assert "not found" in msg and "lukewys/laion_clap" in msg


# --- official checkpoints ---------------------------------------------------------------------------------


def test_paper_architecture_matches_the_listing(paper_random):
    rows = read_key_listing(TINY_LISTING)
    want = {k: (shape, dt) for k, shape, dt in rows if is_audio_key(k)}
    own = {k: (tuple(v.shape), v.dtype) for k, v in paper_random.state_dict().items()}
    assert own == want
    assert paper_random.output_shapes() == {"clap": (512,)}
    assert "logit_scale_t" in [k for k, _, _ in rows if not is_audio_key(k)]


@pytest.mark.parametrize("fmt", ["training-numpy2", "training-numpy1", "bare"])
def test_paper_loads_official_formats_strictly(tmp_path, fmt):
    sd = cheap_state(read_key_listing(TINY_LISTING))
    path = tmp_path / "laion_clap" / "630k-audioset-best.pt"
    path.parent.mkdir()
    torch.save(sd if fmt == "bare" else training_container(sd), path)
    if fmt == "training-numpy1":
        as_numpy1_pickle(path)
    if fmt == "bare":
        torch.load(path, weights_only=True)  # a bare dict needs no allowlist
    else:  # plain weights_only refuses the optimizer's numpy lr: the encoder allowlists numpy scalars
        with pytest.raises(Exception, match="numpy.*multiarray.scalar"):
            torch.load(path, weights_only=True)
    enc = ca.build(paper_cfg(), weights_dir=tmp_path)
    loaded = enc.state_dict()
    assert set(loaded) == {k for k in sd if is_audio_key(k)}
    for k, v in loaded.items():
        assert torch.equal(v, sd[k]), k


def test_music_htsat_base_checkpoint_loads(tmp_path):
    rows = read_key_listing(BASE_LISTING)
    sd = cheap_state(rows)
    torch.save(training_container(sd), tmp_path / "music.pt")
    enc = ca.build(ca.Config(amodel="HTSAT-base", weights="music.pt"), weights_dir=tmp_path)
    own = {k: (tuple(v.shape), v.dtype) for k, v in enc.state_dict().items()}
    assert own == {k: (shape, dt) for k, shape, dt in rows if is_audio_key(k)}
    for k, v in enc.state_dict().items():
        assert torch.equal(v, sd[k]), k
    assert enc.config_dict()["htsat"]["embed_dim"] == 128 and enc.output_shapes() == {"clap": (512,)}


def test_wrong_keys_fail_naming_file_and_keys(tmp_path):
    sd = cheap_state(read_key_listing(TINY_LISTING))
    del sd["audio_branch.norm.weight"]
    sd["audio_branch.extra_layer.weight"] = torch.zeros(3)
    path = tmp_path / "bad.pt"
    torch.save(training_container(sd), path)
    with pytest.raises(CheckpointError) as e:
        ca.build(paper_cfg(weights="bad.pt"), weights_dir=tmp_path)
    msg = str(e.value)
    assert str(path) in msg and "audio_branch.norm.weight" in msg and "audio_branch.extra_layer.weight" in msg


def test_fusion_checkpoint_is_named_as_such(tmp_path):
    sd = cheap_state(read_key_listing(TINY_LISTING))
    sd["audio_branch.patch_embed.fusion_model.local_att.0.weight"] = torch.zeros(3)
    torch.save(sd, tmp_path / "fusion.pt")
    with pytest.raises(CheckpointError, match="feature-fusion"):
        ca.build(paper_cfg(weights="fusion.pt"), weights_dir=tmp_path)


@pytest.mark.slow
def test_paper_equals_laion_clap_module_on_the_same_file(tmp_path, monkeypatch, laion, paper_random):
    """laion-clap's own CLAP_Module + load_ckpt and our encoder read one official-format file."""
    from transformers import RobertaConfig, RobertaModel

    def local_roberta(name):
        assert name == "roberta-base"
        cfg = RobertaConfig(
            vocab_size=50265,
            max_position_embeddings=514,
            type_vocab_size=1,
            layer_norm_eps=1e-5,
            pad_token_id=1,
        )
        return RobertaModel(cfg)

    monkeypatch.setattr(
        ca.clap_module("model"), "RobertaModel", types.SimpleNamespace(from_pretrained=local_roberta)
    )
    monkeypatch.setattr(
        laion.hook, "RobertaTokenizer", types.SimpleNamespace(from_pretrained=lambda name: None)
    )

    rows = read_key_listing(TINY_LISTING)
    audio = paper_random.state_dict()
    cheap = cheap_state(rows)  # text tower: listed shapes, cheap constants
    sd = {k: audio[k].clone() if is_audio_key(k) else v for k, v in cheap.items()}
    path = tmp_path / "laion_clap" / "630k-audioset-best.pt"
    path.parent.mkdir()
    torch.save(training_container(sd), path)

    ref = laion.CLAP_Module(enable_fusion=False, device="cpu", amodel="HTSAT-tiny")
    ref.load_ckpt(str(path), verbose=False)  # the official loader: strict, weights_only=False
    enc = build_encoder("clap", "paper", weights_dir=tmp_path)
    for k, v in enc.state_dict().items():
        assert torch.equal(v, sd[k]), k

    x = np.concatenate([tones(440, 1, noise=0.05), tones(1800, 1, noise=0.2, seed=4, amp=1.1)])
    want = ref.get_audio_embedding_from_data(x)
    got = enc.encode(enc.preprocess(x))["clap"].numpy()
    assert got.shape == want.shape == (2, 512)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
