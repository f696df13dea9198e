"""Presets that extend another: files come from the nearest preset up the chain that has them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.encoders.registry import ENCODER_NAMES
from pipeline.model.config import head_config
from pipeline.presets import PRESETS_DIR, encoder_config, list_presets, preset_chain, preset_file
from pipeline.settings import preset_optim


def write_preset(folder: Path, extends: str | None = None, **files: dict) -> Path:
    """A preset folder with a preset.json (when it extends one) and the given <name>.json files."""
    folder.mkdir(parents=True)
    if extends is not None:
        (folder / "preset.json").write_text(json.dumps({"extends": extends}))
    for name, content in files.items():
        (folder / f"{name}.json").write_text(json.dumps(content))
    return folder


def test_shipped_presets_resolve_every_file():
    assert list_presets() == [
        "paper",
        "paper-official",
        "paper-official-sam1",
        "paper-sam1",
        "tiny",
        "tiny-sam1",
    ]
    for preset in list_presets():
        for name in ENCODER_NAMES:
            assert isinstance(encoder_config(preset, name), dict), (preset, name)
    assert preset_chain("paper-official") == [PRESETS_DIR / "paper-official", PRESETS_DIR / "paper"]
    assert preset_chain("tiny") == [PRESETS_DIR / "tiny"]
    assert preset_chain("paper-official-sam1") == [
        PRESETS_DIR / "paper-official-sam1",
        PRESETS_DIR / "paper-sam1",
        PRESETS_DIR / "paper",
    ]
    # The SAM 1 presets change the SAM slot (and where BEiT-3 is read from) and nothing else.
    for name in ENCODER_NAMES:
        if name not in ("sam2", "beit3"):
            assert encoder_config("tiny-sam1", name) == encoder_config("tiny", name), name
            want = "paper-official" if name == "clap" else "paper"
            assert encoder_config("paper-official-sam1", name) == encoder_config(want, name), name
    assert (
        encoder_config("tiny-sam1", "sam2")["impl"]
        == encoder_config("paper-sam1", "sam2")["impl"]
        == "sam1_image"
    )
    assert encoder_config("paper-sam1", "beit3") == encoder_config("paper", "beit3") | {
        "weights": "evf-sam-multitask/model.safetensors"
    }


def test_paper_official_extends_paper():
    own = {"clap", "sam2"}
    for name in ENCODER_NAMES:
        where = "paper-official" if name in own else "paper"
        assert preset_file("paper-official", f"{name}.json") == PRESETS_DIR / where / f"{name}.json"
    assert preset_file("paper-official", "head.json") == PRESETS_DIR / "paper" / "head.json"
    assert preset_optim("paper-official") == preset_optim("paper")
    assert preset_optim("paper-official").epochs == 40
    assert head_config("paper-official") == head_config("paper")
    assert preset_file("paper-official", "nothing.json") is None


def test_folder_extends_a_shipped_preset_by_name(tmp_path):
    user = write_preset(tmp_path / "mine", extends="paper-official", clip={"model": "RN50", "weights": None})
    assert encoder_config(user, "clip") == {"model": "RN50", "weights": None}  # its own
    assert encoder_config(user, "clap") == encoder_config("paper-official", "clap")  # the parent's
    assert encoder_config(user, "beit3") == encoder_config("paper", "beit3")  # the grandparent's
    assert preset_optim(user).epochs == 40
    # a folder parent, relative to the extending preset; its own files override the chain above it
    child = write_preset(tmp_path / "child", extends="../mine", gt={"size": 112})
    assert encoder_config(child, "gt") == {"size": 112}
    assert encoder_config(child, "clip") == {"model": "RN50", "weights": None}
    assert preset_chain(child)[1:] == [user.resolve(), PRESETS_DIR / "paper-official", PRESETS_DIR / "paper"]


def test_head_and_train_follow_the_chain(tmp_path):
    base = write_preset(tmp_path / "base", head={"fused_scale": "auto"}, train={"epochs": 3})
    child = write_preset(tmp_path / "child", extends=str(base), train={"epochs": 5})
    assert head_config(child).fused_scale == "auto"
    assert preset_optim(child).epochs == 5
    bare = write_preset(tmp_path / "bare")
    assert head_config(bare) == head_config(bare, seed=0)  # defaults when no preset has the file
    assert preset_optim(bare).epochs == 20


def test_cycles_and_unknown_parents_fail_clearly(tmp_path):
    write_preset(tmp_path / "a", extends="../b")
    write_preset(tmp_path / "b", extends="../a")
    with pytest.raises(ValueError, match="extends itself"):
        encoder_config(tmp_path / "a", "clip")
    write_preset(tmp_path / "self", extends=".")
    with pytest.raises(ValueError, match="extends itself"):
        preset_chain(tmp_path / "self")
    write_preset(tmp_path / "orphan", extends="no-such-preset")
    with pytest.raises(ValueError, match="extends unknown preset 'no-such-preset'"):
        preset_file(tmp_path / "orphan", "clip.json")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "preset.json").write_text(json.dumps({"extend": "paper"}))
    with pytest.raises(ValueError, match="keys among"):
        preset_chain(tmp_path / "odd")
    with pytest.raises(ValueError, match="has no config for encoder 'clip'"):
        encoder_config(write_preset(tmp_path / "empty"), "clip")


def test_the_settings_list_the_registrys_encoders():
    from pipeline import settings

    assert settings.ENCODER_NAMES == ENCODER_NAMES
