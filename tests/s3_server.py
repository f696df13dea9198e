"""A real S3 API on loopback for the tests and the bench: moto's server mode, in its own process.

`s3_server()` starts `python -m moto.server -H 127.0.0.1 -p PORT` and yields an S3Server: its endpoint and
the environment (AWS_ENDPOINT_URL and fake credentials) under which s3fs, the `av2t` command and Dask
workers reach it. The server checks every request's signature: only
the key of the IAM user made at start is accepted (a wrong secret is refused, as on AWS). `stop()` / `start()`
take it away and bring it back on the same port (moto keeps buckets and keys in memory: a restart empties
the buckets and makes a new key). `missing()` names what is not installed (the tests skip).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

REGION = "us-east-1"
# moto checks signatures once told to (POST /moto-api/reset-auth): its IAM user's key is the only one it
# accepts. Requests before that (this user's creation) need none.
USER, POLICY = (
    "av2t",
    '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}',
)


def missing() -> str | None:
    """What the S3 tests lack (None when s3fs and moto's server are installed)."""
    for module, pip in (("s3fs", "s3fs"), ("moto", "moto[server]"), ("flask", "moto[server]")):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install {pip}, or the dev extra)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    """One moto server process on 127.0.0.1:port."""

    def __init__(self, port: int | None = None, log: Path | None = None, auth: bool = True):
        self.port = port or _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = log or Path(tempfile.mkdtemp(prefix="moto-")) / "moto.log"
        self.proc: subprocess.Popen | None = None
        self.access_key = self.secret_key = ""
        self.auth = auth

    @property
    def env(self) -> dict[str, str]:
        """The variables that point s3fs (botocore) at this server with the fake credentials."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": REGION,
        }

    def start(self, timeout: float = 30) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"moto server exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}"
                )
            try:
                with opener.open(f"{self.endpoint}/moto-api/", timeout=1):
                    break
            except OSError:
                time.sleep(0.2)
        else:
            self.stop()
            raise TimeoutError(f"moto server on {self.endpoint} did not answer within {timeout} s")
        try:
            if self.auth:
                self._enforce_auth(opener)
            else:
                self.access_key, self.secret_key = "AKIAAV2TANYKEY", "any-secret-moto-accepts"
        except BaseException:
            self.stop()
            raise

    def _client(self, service: str, key: str = "any", secret: str = "any"):
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            region_name=REGION,
        )

    def _enforce_auth(self, opener) -> None:
        iam = self._client("iam")
        iam.create_user(UserName=USER)
        iam.put_user_policy(UserName=USER, PolicyName="all", PolicyDocument=POLICY)
        key = iam.create_access_key(UserName=USER)["AccessKey"]
        self.access_key, self.secret_key = key["AccessKeyId"], key["SecretAccessKey"]
        request = urllib.request.Request(  # a form content type would leave moto an empty body
            f"{self.endpoint}/moto-api/reset-auth", data=b"0", headers={"Content-Type": "text/plain"}
        )
        with opener.open(request, timeout=5):
            pass

    def stop(self) -> None:
        if self.proc is None:
            return
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def filesystem(self, **options):
        """A fresh s3fs filesystem on this server (no instance cache: credentials may differ per test)."""
        import s3fs

        return s3fs.S3FileSystem(
            key=self.access_key,
            secret=self.secret_key,
            endpoint_url=self.endpoint,
            client_kwargs={"region_name": REGION},
            skip_instance_cache=True,
            **options,
        )

    def make_bucket(self, name: str) -> str:
        """Create a bucket (if missing); its s3:// URL.

        Through boto3 (moto's dependency): s3fs's mkdir sends the region as LocationConstraint, which S3
        refuses for us-east-1.
        """
        client = self._client("s3", self.access_key, self.secret_key)
        if name not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
            client.create_bucket(Bucket=name)
        return f"s3://{name}"


@contextmanager
def s3_server(log: Path | None = None) -> Iterator[S3Server]:
    """A running moto server (stopped on exit)."""
    server = S3Server(log=log)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Proxy:
    """A TCP proxy on loopback in front of a server, to make its faults real (the server keeps its data).

    `down()` takes the endpoint away (listening socket and open connections closed: refused from then on),
    `up()` brings it back on the same port; `cut(n)`: the next n responses are cut off part-way (the
    connection reset after part of their bytes), a transient fault a client retries; `down_after(nbytes)`:
    the endpoint goes away once that many response bytes have passed (a server gone in the middle of a read).
    """

    def __init__(self, target_port: int):
        self.target = ("127.0.0.1", target_port)
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.cuts = self.cut_done = 0
        self.passed, self.limit = 0, None
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None

    def up(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        self._listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def down(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, []
        for s in [listener, *conns]:
            if s is not None:
                with suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def cut(self, n: int) -> None:
        with self._lock:
            self.cuts, self.cut_done = n, 0

    def down_after(self, nbytes: int) -> None:
        with self._lock:
            self.passed, self.limit = 0, nbytes

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._conns += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, response: bool) -> None:
        try:
            while data := src.recv(65536):
                go_down = False
                if response:
                    with self._lock:
                        if self.cuts > 0:
                            self.cuts, self.cut_done = self.cuts - 1, self.cut_done + 1
                            dst.sendall(data[: max(1, len(data) // 2)])
                            raise ConnectionResetError("cut")
                        self.passed += len(data)
                        go_down = self.limit is not None and self.passed >= self.limit
                if go_down:
                    self.limit = None
                    self.down()
                    return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
