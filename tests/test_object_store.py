"""The feature store on an S3-compatible object store, against a real S3 API on loopback (moto's server mode,
signatures checked; tests/s3_server.py), s3fs as the filesystem.

`av2t extract` through the Dask task runner (workers writing to the bucket), `cache info` / `cache verify`,
`av2t train` streaming, `av2t evaluate --mode cached` on `s3://`; resident and streaming readers give the local
store's batches; every array bit-identical to a local extraction. No secret in any file, object or output.
A missing bucket, wrong or no credentials, a server that is not there or goes away mid-read: one line each.
A read cut off part-way is retried and gives the same bytes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from s3_server import Proxy

from cache import FeatureStore
from cache.batches import Source
from cache.errors import StoreUnavailable
from cache.feed import open_reader
from flows.errors import one_line
from flows.settings import TrainFlowSettings
from pipeline.data.synth import SynthSpec, write_synthetic
from pipeline.settings import EvalConfig
from stages.evaluate import evaluate
from stages.extract import ExtractConfig, extract
from stages.train import train

REPO = Path(__file__).resolve().parents[1]
# One torch thread in every process: Dask workers start with one, and CPU kernels reduce in a
# thread-count-dependent order, so only equal counts give bit-identical features and weights.
THREADS = "1"
ERROR = "av2t: error: "


def av2t(env: dict, *args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """`av2t ARGS` (as `python -m flows.cli`) under env, its output kept (the secret test reads it)."""
    out = subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        env=env,
        cwd=str(cwd),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    (cwd / "outputs").mkdir(exist_ok=True)
    n = len(list((cwd / "outputs").iterdir()))
    (cwd / "outputs" / f"{n:02d}-{args[0]}.txt").write_text(out.stdout + "\n" + out.stderr)
    return out


def one_error_line(out: subprocess.CompletedProcess) -> str:
    """The command failed with exit status 2 and one `av2t: error:` line, no traceback; that line."""
    assert out.returncode == 2, (out.returncode, out.stdout[-2000:], out.stderr[-3000:])
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(ERROR), out.stderr
    return lines[0]


def arrays(url: str, storage_options: dict | None = None) -> dict[str, np.ndarray]:
    """Every array of every group (features, completion records, the index columns) by name."""
    fs = FeatureStore(url, mode="r", storage_options=storage_options)
    out = {}
    for subset, split in fs.groups():
        g = fs.split(subset, split)
        for c in ("video", "frame", "category", "has_mask"):
            out[f"{subset}/{split}/index/{c}"] = g.group["index"][c][:]
        for e in g.encoders():
            out |= {f"{subset}/{split}/{e.key}/{n}": e.array(n)[:] for n in e.specs}
            out[f"{subset}/{split}/{e.key}/done"] = e.done_mask()
    return out


def assert_same_arrays(got: dict, want: dict) -> None:
    assert got.keys() == want.keys() and want
    for k in want:
        assert got[k].dtype == want[k].dtype, k
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """This module's folder: every run folder and every command's output lie under it."""
    return tmp_path_factory.mktemp("object-store")


@pytest.fixture(scope="module")
def local(work) -> dict:
    """A small synthetic S4 tree (2 / 1 / 1 videos) and its features in a local store, one thread."""
    root = work / "data"
    write_synthetic(root, "s4", videos=4, seed=5, spec=SynthSpec(test_fraction=0.3))
    store = str(work / "local.zarr")
    extract(ExtractConfig(root=root, subset="s4", store=store, device="cpu", threads=1), progress=False)
    return {"root": root, "store": store}


@pytest.fixture(scope="module")
def env(s3, prefect_env) -> dict:
    """The environment of the `av2t` commands: the test Prefect server, the S3 endpoint and credentials."""
    return {**prefect_env, **s3.env, "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def cli_env(s3) -> dict:
    """The environment of the `av2t cache` commands (no flow: no Prefect server)."""
    return {
        **os.environ,
        **s3.env,
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }


@pytest.fixture(scope="module")
def s3_url(s3, env, local, work) -> str:
    """`av2t extract` of the local store's tree into the bucket, through a local Dask cluster."""
    url = s3.make_bucket("av2t-features") + "/runs/store.zarr"
    out = av2t(
        env, "extract", "--root", str(local["root"]), "--subset", "s4", "--store", url, "--device", "cpu",
        "--threads", THREADS, "--task-runner", "dask", "--workers", "1", cwd=work,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return url


@pytest.fixture
def s3_env(s3, monkeypatch):
    """This process reaches the server as the commands do: through the AWS environment."""
    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)


@pytest.mark.slow
def test_dask_extraction_into_the_bucket_is_bit_identical(s3_url, local, s3_env):
    assert_same_arrays(arrays(s3_url), arrays(local["store"]))


def test_cache_info_and_verify_read_the_bucket(s3_url, cli_env, work):
    info = av2t(cli_env, "cache", "info", s3_url, "--json", cwd=work)
    assert info.returncode == 0, info.stderr[-2000:]
    groups = json.loads(info.stdout)["groups"]
    assert {(g["subset"], g["split"]) for g in groups} == {("s4", "train"), ("s4", "val"), ("s4", "test")}
    assert all(e["rows_done"] == e["rows_total"] > 0 for g in groups for e in g["encoders"].values())
    verify = av2t(cli_env, "cache", "verify", s3_url, cwd=work)
    assert verify.returncode == 0 and "clean" in verify.stdout, verify.stdout + verify.stderr[-2000:]


@pytest.mark.parametrize("mode", ["resident", "streaming"])
def test_readers_give_the_local_batches(s3_url, local, s3_env, mode):
    g = FeatureStore(local["store"], mode="r").split("s4", "train")
    sources = {f"{e.name}.{n}": Source(e.key, n) for e in g.encoders() for n in e.specs}
    readers = [
        open_reader(url, "s4", "train", sources, batch_size=1, shuffle=True, seed=3, mode=mode, threads=2)
        for url in (s3_url, local["store"])
    ]
    assert [r.mode for r in readers] == [mode, mode]
    for epoch in (0, 1):
        got, want = (list(r.epoch(epoch)) for r in readers)
        assert len(got) == len(want) > 0
        for a, b in zip(got, want, strict=True):
            assert a.keys() == b.keys()
            for k in a:
                assert torch.equal(a[k], b[k]), (epoch, k)


@pytest.mark.slow
def test_train_and_cached_evaluate_on_s3_equal_the_local_runs(s3_url, local, env, work, s3_env):
    """`av2t train --feed streaming` and `av2t evaluate --mode cached` on s3:// give the weights and scores of
    the same runs on the local store; a resident training from s3:// runs too."""
    args = ["--subset", "s4", "--device", "cpu", "--threads", THREADS, "--epochs", "1", "--batch-size", "2"]
    out = av2t(env, "train", "--store", s3_url, "--feed", "streaming", "--out", "runs/s3", *args, cwd=work)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    settings = TrainFlowSettings(
        store=local["store"], subset="s4", device="cpu", threads=1, epochs=1, batch_size=2, feed="streaming"
    )
    cfg = settings.stage().model_copy(update={"out": work / "runs" / "local", "progress": False})
    train(cfg)
    s3_run, local_run = work / "runs" / "s3", work / "runs" / "local"
    got, want = (pd.read_csv(d / "metrics.csv") for d in (s3_run, local_run))
    cols = ["epoch", "train_loss", "val_loss", "val_M_J", "val_M_F"]
    pd.testing.assert_frame_equal(got[cols], want[cols])
    a, b = (torch.load(d / "best.pt", map_location="cpu", weights_only=False) for d in (s3_run, local_run))
    assert a["trainable"].keys() == b["trainable"].keys()
    for k, v in b["trainable"].items():
        assert torch.equal(a["trainable"][k], v), k

    resident = cfg.model_copy(
        update={"store": s3_url, "feed": "resident", "out": work / "runs" / "s3-resident"}
    )
    train(resident)
    assert (work / "runs" / "s3-resident" / "best.pt").is_file()

    common = ["--root", str(local["root"]), "--subset", "s4", "--device", "cpu", "--threads", THREADS]
    out = av2t(
        env, "evaluate", "--mode", "cached", "--store", s3_url, "--checkpoint", str(s3_run / "best.pt"),
        "--out", "runs/s3-eval", *common, cwd=work,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    evaluate(
        EvalConfig(
            checkpoint=local_run / "best.pt", root=local["root"], subset="s4", store=local["store"],
            device="cpu", threads=1, out=work / "runs" / "local-eval", progress=False,
        )
    )  # fmt: skip
    got, want = (
        json.loads((work / "runs" / d / "report.json").read_text()) for d in ("s3-eval", "local-eval")
    )
    assert got["score_rows"] == want["score_rows"]
    assert {r["label"] for r in got["score_rows"]} >= {"M_J", "M_F"}


@pytest.fixture(scope="module")
def small_url(s3) -> str:
    """A small store (no encoder run: tests/store_helpers' rows) in its own bucket, for the faults."""
    from store_helpers import block_data, open_encoder

    url = s3.make_bucket("av2t-small") + "/store.zarr"
    with pytest.MonkeyPatch.context() as mp:
        for k, v in s3.env.items():
            mp.setenv(k, v)
        enc = open_encoder(url)
        for b in range(enc.split.n_blocks):
            enc.write_block(b, block_data(enc, b))
    return url


def test_wrong_credentials_one_line_from_the_command(s3, small_url, cli_env, work):
    wrong = "Wr0ngSecretForTheTest/abcdefghijklmnopqrstu"
    denied = one_error_line(
        av2t({**cli_env, "AWS_SECRET_ACCESS_KEY": wrong}, "cache", "verify", small_url, cwd=work)
    )
    assert denied.startswith(f"{ERROR}{small_url}: the object store at {s3.endpoint} refused the credentials")
    assert "AWS_SECRET_ACCESS_KEY" in denied and wrong not in denied and s3.secret_key not in denied


def store_error(url: str, mode: str = "r", **options) -> str:
    """The one line `av2t` prints for opening (and reading) the store: a StoreUnavailable."""
    with pytest.raises(StoreUnavailable) as e:
        FeatureStore(url, mode=mode, storage_options={"skip_instance_cache": True, **options}).groups()
    line = one_line(e.value)
    assert line is not None and "\n" not in line
    return line


def test_missing_bucket_no_credentials_no_server_one_line_each(s3, small_url, s3_env, monkeypatch, work):
    for mode in ("r", "a"):  # read (info, train, evaluate) and write (extract)
        line = store_error("s3://no-such-bucket/store.zarr", mode)
        assert line.startswith("s3://no-such-bucket/store.zarr: the bucket 'no-such-bucket' does not exist")
        assert s3.endpoint in line and "AWS_ENDPOINT_URL" in line

    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    gone = f"http://127.0.0.1:{Proxy(s3.port).port}"  # a port nothing listens on
    line = store_error(small_url, endpoint_url=gone)
    assert line.startswith(f"{small_url}: the object store at {gone} cannot be reached")
    assert "AWS_ENDPOINT_URL" in line

    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(k)
    for k in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
        monkeypatch.setenv(k, str(work / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    line = store_error(small_url)
    assert line.startswith(f"{small_url}: no credentials for the object store") and "AWS_PROFILE" in line


def test_server_gone_mid_verify_is_one_line_not_damage(s3, small_url, cli_env, work):
    proxy = Proxy(s3.port)
    proxy.up()
    try:
        through = {**cli_env, "AWS_ENDPOINT_URL": proxy.endpoint, "AWS_MAX_ATTEMPTS": "2"}
        size = sum(s3.filesystem().du(small_url.removeprefix("s3://"), total=False).values())
        proxy.down_after(size // 2)  # the server goes away in the middle of the reads
        line = one_error_line(av2t(through, "cache", "verify", small_url, cwd=work))
        assert line.startswith(f"{ERROR}{small_url}: the object store at {proxy.endpoint} cannot be reached")
        assert "nothing stored is damaged" in line
        proxy.up()
        again = av2t(through, "cache", "verify", small_url, cwd=work)
        assert again.returncode == 0 and "clean" in again.stdout, again.stdout + again.stderr[-2000:]
    finally:
        proxy.down()


def test_read_cut_off_is_retried_with_the_same_bytes(s3, small_url, s3_env, monkeypatch):
    """Storage options instead of the environment: the credentials and the endpoint (a proxy that cuts
    responses off part-way, then goes away) given to the store; no secret in the error."""
    want = arrays(small_url)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")  # a retry each (and a short wait once the server is gone)
    proxy = Proxy(s3.port)
    proxy.up()
    so = {"key": s3.access_key, "secret": s3.secret_key, "endpoint_url": proxy.endpoint}
    so |= {"client_kwargs": {"region_name": s3.env["AWS_DEFAULT_REGION"]}, "skip_instance_cache": True}
    try:
        proxy.cut(3)
        assert_same_arrays(arrays(small_url, so), want)
        assert proxy.cut_done == 3  # three responses were cut off part-way, and read again
        enc = FeatureStore(small_url, mode="r", storage_options=so).split("s4", "test").encoder("fake")
        proxy.down()
        with pytest.raises(StoreUnavailable) as e:
            enc.array("fmap")[:]
        line = one_line(e.value)
        assert line.startswith(f"{small_url}: the object store at {proxy.endpoint} cannot be reached")
        assert s3.secret_key not in line
        proxy.up()
        np.testing.assert_array_equal(enc.array("fmap")[:], want[f"s4/test/{enc.key}/fmap"])
    finally:
        proxy.down()


def test_no_secret_in_any_file_object_or_output(s3, s3_url, small_url, env, work):
    """The secret key is in no file under the runs, no command output, no object in the bucket and nothing
    the Prefect server keeps (its database, its logs)."""
    secret = s3.secret_key.encode()
    files = [p for p in work.rglob("*") if p.is_file()]
    files += [p for p in Path(env["PREFECT_HOME"]).rglob("*") if p.is_file()]
    assert any(p.parent.name == "outputs" for p in files)
    leaks = [str(p) for p in files if secret in p.read_bytes()]
    assert not leaks, leaks
    fs = s3.filesystem()
    objects = [k for url in (s3_url, small_url) for k in fs.find(url.removeprefix("s3://"))]
    assert objects
    assert not [k for k in objects if secret in fs.cat_file(k)]
