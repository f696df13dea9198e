"""One config surface: the `av2t` options and the flows' parameters come from the settings models."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import build_parser
from flows.cli import main as cli
from flows.options import values
from flows.settings import (
    CacheExportOptions,
    EvalFlowSettings,
    ExtractFlowSettings,
    TrainFlowSettings,
)
from pipeline.model.config import head_config
from pipeline.settings import (
    DEFAULT_STORE,
    EvalConfig,
    ExtractConfig,
    OptimConfig,
    TrainConfig,
)

REPO = Path(__file__).resolve().parents[1]


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, parser) of every leaf subcommand."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for action in subs:
        for name, p in action.choices.items():
            yield from _commands(p, (*path, name))


def _parser(*path: str) -> argparse.ArgumentParser:
    return dict(_commands(build_parser()))[path]


def _action(parser: argparse.ArgumentParser, dest: str) -> argparse.Action:
    return next(a for a in parser._actions if a.dest == dest)


COMMANDS = [path for path, _ in _commands(build_parser())]


def test_every_command_is_there():
    assert {" ".join(p) for p in COMMANDS} == {
        "synth",
        "data check",
        "cache info",
        "cache verify",
        "cache export",
        "cache import",
        "extract",
        "train",
        "score",
        "evaluate",
        "segment",
        "app",
        "demo",
        "official import",
        "official export",
        "serve",
    }


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_every_option_has_help_and_a_default(path, capsys):
    parser = _parser(*path)
    for a in parser._actions:
        if isinstance(a, argparse._HelpAction):
            continue
        assert a.help and len(a.help) > 15, (path, a.dest)
        assert a.required or "(default" in a.help, (path, a.dest, a.help)
    with pytest.raises(SystemExit) as e:
        cli([*path, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    options = [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]
    assert text.count("(default") + text.count("(required)") >= len(options)


def test_help_imports_neither_prefect_nor_torch():
    code = (
        "import sys\n"
        "from flows.cli import main\n"
        "for argv in (['--help'], ['data', 'check', '--help'], ['extract', '--help'], ['evaluate', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in ('prefect', 'torch', 'zarr', 'dask') if m in sys.modules), file=sys.stderr)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stderr.strip().splitlines()[-1] == "[]"


def test_defaults_are_read_from_the_settings():
    extract, train, evaluate = _parser("extract"), _parser("train"), _parser("evaluate")
    assert _action(extract, "store").default == ExtractConfig.model_fields["store"].default == DEFAULT_STORE
    assert _action(train, "store").default == TrainConfig.model_fields["store"].default == DEFAULT_STORE
    assert _action(evaluate, "store").default == DEFAULT_STORE  # cached mode's store; the model has none
    assert _action(extract, "splits").default == ["train", "val", "test"]
    assert _action(extract, "batch_size").help.startswith(
        ExtractConfig.model_fields["batch_size"].description
    )
    assert _action(train, "epochs").help.startswith(OptimConfig.model_fields["epochs"].description)
    assert _action(evaluate, "overlays").default == EvalConfig.model_fields["overlays"].default


def test_existing_option_names_still_parse():
    ns = build_parser().parse_args(
        ["train", "--subset", "s4", "--no-resume", "--sweep", "s.json", "--epochs", "3", "--lr", "0.1"]
        + ["--batch-size", "4"]
    )
    v = values(ns, TrainFlowSettings)
    assert v["resume"] is False and v["sweep_file"] == Path("s.json")
    assert (v["epochs"], v["lr"], v["batch_size"]) == (3, 0.1, 4)
    stage = TrainFlowSettings.model_validate(v).stage()
    assert (stage.optim.epochs, stage.optim.lr, stage.optim.batch_size) == (3, 0.1, 4)

    ns = build_parser().parse_args(
        ["extract", "--root", "r", "--subset", "ms3", "--splits", "test", "--allow-other-fingerprints"]
        + ["--overrides", '{"sam2": {"trunk_block": 4}}']
    )
    s = ExtractFlowSettings.model_validate(values(ns, ExtractFlowSettings))
    assert s.splits == ["test"] and s.allow_other_fingerprints and s.overrides == {"sam2": {"trunk_block": 4}}
    assert s.stage() == ExtractConfig(
        root=Path("r"),
        subset="ms3",
        splits=["test"],
        allow_other_fingerprints=True,
        overrides={"sam2": {"trunk_block": 4}},
    )

    ns = build_parser().parse_args(
        ["cache", "export", "st", "--h5", "x.h5", "--group", "s4/train", "--group", "s4/val"]
    )
    assert CacheExportOptions.model_validate(values(ns, CacheExportOptions)).group == ["s4/train", "s4/val"]
    ns = build_parser().parse_args(
        ["evaluate", "--checkpoint", "c", "--root", "r", "--subset", "s4"] + ["--vision-bias", "--save-masks"]
    )
    assert ns.vision_bias and ns.save_masks and ns.mode == "cached"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["extract", "--root", "r"])  # the subset is asked for, not assumed


def test_a_head_file_changes_only_its_fields(tmp_path):
    f = tmp_path / "head.json"
    f.write_text(json.dumps({"fusion": "clip"}))
    ns = build_parser().parse_args(["train", "--subset", "s4", "--head", str(f), "--preset", "tiny"])
    head = TrainFlowSettings.model_validate(values(ns, TrainFlowSettings)).head
    assert head == head_config("tiny", fusion="clip")
    assert cli(["train", "--subset", "s4", "--head", str(f), "--preset", "no-such-preset"]) == 2


def test_evaluate_prints_the_reports_score_rows(monkeypatch, tmp_path, capsys):
    import stages.evaluate

    rows = [
        {"key": "M_J", "label": "M_J", "value": 0.5, "compare": True},
        {"key": "X", "label": "some new score", "value": 0.25, "compare": False},
    ]
    seen = {}

    def fake(cfg):
        seen["cfg"] = cfg
        r = {"subset": "s4", "split": "test", "mode": cfg.mode, "videos": 2, "frames": 10}
        return r | {"score_rows": rows, "M_F_batching": "one video per batch"}

    monkeypatch.setattr(stages.evaluate, "evaluate", fake)
    args = ["evaluate", "--checkpoint", "c.pt", "--root", "r", "--subset", "s4", "--out", str(tmp_path)]
    assert cli(args) == 0
    text = capsys.readouterr().out
    assert f"  {'M_J':<24}0.5000" in text and f"  {'some new score':<24}0.2500" in text
    assert seen["cfg"].store == DEFAULT_STORE and seen["cfg"].overlays == 3


def _schema(flow) -> dict:
    return flow.parameters.model_dump_for_openapi()


def test_flow_parameters_carry_the_models_defaults_and_descriptions():
    pytest.importorskip("prefect")
    from prefect.utilities.callables import get_call_parameters

    from flows.evaluate import evaluate
    from flows.extract import extract_features
    from flows.train import train_head

    ex = _schema(extract_features)
    assert ex["required"] == ["root"]
    assert list(ex["properties"]) == list(ExtractFlowSettings.model_fields)
    for name in ("store", "batch_size", "frames", "task_runner"):
        prop, field = ex["properties"][name], ExtractFlowSettings.model_fields[name]
        assert prop["description"] == field.description and prop["default"] == field.default, name
    assert (
        ex["properties"]["store"]["default"] == _action(_parser("extract"), "store").default == DEFAULT_STORE
    )
    assert ex["properties"]["block_rows"]["minimum"] == 1
    # batch_size may be left out (the preset's extract.json decides): an integer >= 1 or null
    assert {"type": "integer", "minimum": 1} in ex["properties"]["batch_size"]["anyOf"]

    tr = _schema(train_head)
    assert "optim" not in tr["properties"] and "progress" not in tr["properties"]
    assert tr["properties"]["epochs"]["description"].startswith(
        OptimConfig.model_fields["epochs"].description
    )
    assert tr["properties"]["store"]["default"] == DEFAULT_STORE

    ev = _schema(evaluate)
    assert {"checkpoints", "reports", "tolerance"} <= set(ev["properties"]) and "out" not in ev["properties"]
    assert ev["properties"]["mode"]["default"] == "end-to-end"
    assert ev["properties"]["root"]["description"] == EvalConfig.model_fields["root"].description
    assert ev["properties"]["tolerance"]["default"] == EvalFlowSettings.model_fields["tolerance"].default

    # What the flow function receives when called with some parameters: the model's defaults for the rest.
    got = get_call_parameters(train_head.fn, (), {"subset": "ms3"})
    want = TrainFlowSettings(subset="ms3").model_dump(exclude={"optim", "progress"})
    assert got == want
