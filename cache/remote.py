"""A store on an object store (s3://, gs://, az://, any fsspec URL): its failures as one StoreError each.

zarr reads and writes a remote store through fsspec (s3fs for s3://), whose failures arrive as whatever the
client library raises: botocore's EndpointConnectionError (not even an OSError), a PermissionError that says
"Forbidden", a FileNotFoundError for a bucket that does not exist. `CheckedStore` wraps zarr's FsspecStore so
that every call turns them into StoreUnavailable, whose one line names the store URL and what to check
(the endpoint, the credentials, the bucket) and never holds a credential. A store read is never taken for
damage because the network failed (cache.errors.STORAGE_ERRORS). The credentials are the filesystem's own:
for s3fs the usual AWS environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE, AWS_ENDPOINT_URL)
or fsspec's configuration (FSSPEC_S3_* variables, ~/.config/fsspec), or storage options in the library.
Transient failures are retried where they happen, by the client (botocore's and s3fs's retries).
"""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from zarr.abc.store import ByteRequest
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import FsspecStore, WrapperStore

from cache.errors import StoreError, StoreUnavailable

T = TypeVar("T")

# Filesystems whose URL starts with a bucket (container): a missing one is named as such.
BUCKET_SCHEMES = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "oss", "r2"}
# Error codes of S3-compatible servers that mean "these credentials may not do this".
DENIED_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "Forbidden",
    "403",
}
# Libraries whose errors (whatever their class) are the storage's: the network, the server, the credentials.
CLIENT_MODULES = (
    "botocore",
    "aiobotocore",
    "aiohttp",
    "urllib3",
    "requests",
    "s3fs",
    "gcsfs",
    "adlfs",
    "azure",
)
# Where a secret may be, to keep it out of every message (the client's own text is quoted in some).
SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "FSSPEC_S3_SECRET")
SECRET_WORDS = ("secret", "token", "password", "credential", "key")


def is_remote(url: str) -> bool:
    """Whether a store URL names an fsspec filesystem other than the local one."""
    return "://" in str(url) and not str(url).startswith("file://")


def _classes(e: BaseException) -> list[type]:
    return list(type(e).__mro__)


def _client_error(e: BaseException) -> bool:
    return any(c.__module__.split(".")[0] in CLIENT_MODULES for c in _classes(e))


def _code(e: BaseException) -> str:
    """The S3 error code of a botocore ClientError (also when s3fs made an OSError of it), else ''."""
    for x in (e, e.__cause__, e.__context__):
        response = getattr(x, "response", None)
        if isinstance(response, dict):
            return str(response.get("Error", {}).get("Code", ""))
    return ""


def _secrets(storage_options: dict[str, Any] | None) -> list[str]:
    found = [os.environ.get(v, "") for v in SECRET_VARIABLES]

    def walk(x: Any, key: str = "") -> None:
        if isinstance(x, dict):
            for k, v in x.items():
                walk(v, str(k))
        elif isinstance(x, str) and any(w in key.lower() for w in SECRET_WORDS):
            found.append(x)

    walk(storage_options or {})
    return [s for s in found if len(s) >= 4]


def redact(text: str, storage_options: dict[str, Any] | None = None) -> str:
    """text with every known secret (the AWS environment's, the storage options') replaced by ***."""
    for secret in _secrets(storage_options):
        text = text.replace(secret, "***")
    return text


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    name = type(e).__name__
    return f"{name}: {text[:160]}" if text and text != name else name


def _endpoint(e: BaseException, fs: Any) -> str:
    """scheme://host[:port] of the server (no user, path or query), '' when unknown."""
    candidates = []
    for x in (e, e.__cause__, e.__context__):
        kwargs = getattr(x, "kwargs", None)
        if isinstance(kwargs, dict) and kwargs.get("endpoint_url"):
            candidates.append(str(kwargs["endpoint_url"]))
    client_kwargs = getattr(fs, "client_kwargs", None) or {}
    candidates += [
        str(getattr(fs, "endpoint_url", "") or client_kwargs.get("endpoint_url") or ""),
        os.environ.get("AWS_ENDPOINT_URL_S3", ""),
        os.environ.get("AWS_ENDPOINT_URL", ""),
    ]
    for c in candidates:
        parts = urlsplit(c)
        if parts.scheme and parts.hostname:
            port = f":{parts.port}" if parts.port else ""
            return f"{parts.scheme}://{parts.hostname}{port}"
    return ""


def _bucket(url: str) -> str | None:
    scheme, _, rest = str(url).partition("://")
    return rest.split("/", 1)[0] or None if scheme in BUCKET_SCHEMES else None


def unavailable(
    url: str, e: BaseException, fs: Any = None, storage_options: dict[str, Any] | None = None
) -> StoreUnavailable | None:
    """The StoreUnavailable for a failure of the storage under url, or None when e is no storage failure.

    One line: the URL, what failed (no credential in it), what to check.
    """
    if isinstance(e, StoreError):
        return None
    code = _code(e)
    names = {c.__name__ for c in _classes(e)}
    where = _endpoint(e, fs)
    at = f" at {where}" if where else ""
    credentials = "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or the storage options"
    if names & {"NoCredentialsError", "PartialCredentialsError"}:
        text = f"no credentials for the object store{at}: set {credentials}"
    elif code in DENIED_CODES or isinstance(e, PermissionError):
        text = (
            f"the object store{at} refused the credentials ({_reason(e)}): check {credentials}, and that "
            "they may read (and, to extract, write) this bucket"
        )
    elif code == "NoSuchBucket":
        return no_bucket(url, fs, storage_options, e)
    elif (
        isinstance(e, (ConnectionError, TimeoutError))
        or getattr(e, "errno", None)
        in (errno.ECONNREFUSED, errno.ECONNRESET, errno.ETIMEDOUT, errno.EHOSTUNREACH)
        or names
        & {"EndpointConnectionError", "ConnectionClosedError", "ConnectTimeoutError", "ReadTimeoutError"}
        or names
        & {"ClientConnectionError", "ServerDisconnectedError", "ClientPayloadError", "FSTimeoutError"}
        or (_client_error(e) and "connect" in str(e).lower())
    ):
        text = (
            f"the object store{at} cannot be reached or stopped answering ({_reason(e)}): check that the "
            "server is up and the endpoint (AWS_ENDPOINT_URL); nothing stored is damaged: run the same "
            "command again once it answers"
        )
    elif _client_error(e) or (isinstance(e, OSError) and is_remote(url)):
        text = f"the object store{at} failed ({_reason(e)}): check the endpoint (AWS_ENDPOINT_URL) and the credentials"
    else:
        return None
    return StoreUnavailable(redact(f"{url}: {text}", storage_options), store=url)


def no_bucket(
    url: str, fs: Any = None, storage_options: dict[str, Any] | None = None, e: BaseException | None = None
) -> StoreUnavailable:
    """The error for a store URL whose bucket does not exist."""
    where = _endpoint(e, fs) if e is not None else _endpoint(Exception(), fs)
    at = f" at {where}" if where else ""
    text = (
        f"{url}: the bucket '{_bucket(url) or '?'}' does not exist on the object store{at}: check the bucket "
        "name in the URL and the endpoint (AWS_ENDPOINT_URL), or create the bucket"
    )
    return StoreUnavailable(redact(text, storage_options), store=url)


async def bucket_missing(
    url: str, fs: Any, storage_options: dict[str, Any] | None = None
) -> StoreUnavailable | None:
    """The error for a store URL whose bucket does not exist (None when it does, or the URL has none)."""
    bucket = _bucket(url)
    if bucket is None or fs is None or not hasattr(fs, "_exists"):
        return None
    try:
        exists = await fs._exists(bucket)
    except Exception as e:  # the bucket could not even be looked up: that failure is the message
        return unavailable(url, e, fs, storage_options)
    return None if exists else no_bucket(url, fs, storage_options)


class CheckedStore(WrapperStore[FsspecStore]):
    """zarr's FsspecStore whose every failure of the storage is a StoreUnavailable naming the store URL.

    A missing key is still a missing key (FsspecStore answers None / False / an empty listing for it).
    """

    def __init__(self, store: FsspecStore, url: str, storage_options: dict[str, Any] | None = None):
        super().__init__(store)
        self.url, self.storage_options = url, storage_options

    @classmethod
    def from_url(
        cls, url: str, read_only: bool, storage_options: dict[str, Any] | None = None
    ) -> CheckedStore:
        try:
            inner = FsspecStore.from_url(url, storage_options=storage_options, read_only=read_only)
        except ImportError:
            raise
        except Exception as e:
            err = unavailable(url, e, None, storage_options)
            if err is None:
                raise
            raise err from e
        return cls(inner, url, storage_options)

    def fs_of(self) -> Any:
        """The fsspec filesystem underneath."""
        return self._store.fs

    def _with_store(self, store: FsspecStore) -> CheckedStore:
        return type(self)(store, self.url, self.storage_options)

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self._store, self.url, self.storage_options)

    async def translated(self, e: BaseException) -> BaseException:
        """e as the StoreUnavailable it means, or e itself (a key that is not there is just that, unless its
        bucket is what is missing)."""
        fs = self._store.fs
        if isinstance(e, FileNotFoundError) and _code(e) != "NoSuchBucket":
            return await bucket_missing(self.url, fs, self.storage_options) or e
        return unavailable(self.url, e, fs, self.storage_options) or e

    async def _call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        try:
            return await fn(*args)
        except Exception as e:
            err = await self.translated(e)
            if err is e:
                raise
            raise err from e

    async def _each(self, it: AsyncIterator[Any]) -> AsyncIterator[Any]:
        try:
            async for x in it:
                yield x
        except Exception as e:
            err = await self.translated(e)
            if err is e:
                raise
            raise err from e

    def _get_many(
        self, requests: Iterable[tuple[str, BufferPrototype, ByteRequest | None]]
    ) -> AsyncIterator[Any]:
        return self._each(self._store._get_many(requests))

    async def _set_many(self, values: Iterable[tuple[str, Buffer]]) -> None:
        return await self._call(self._store._set_many, values)

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        return await self._call(self._store.get, key, prototype, byte_range)

    async def get_partial_values(self, prototype: BufferPrototype, key_ranges: Any) -> list[Buffer | None]:
        return await self._call(self._store.get_partial_values, prototype, key_ranges)

    async def exists(self, key: str) -> bool:
        return await self._call(self._store.exists, key)

    async def set(self, key: str, value: Buffer) -> None:
        return await self._call(self._store.set, key, value)

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        return await self._call(self._store.set_if_not_exists, key, value)

    async def delete(self, key: str) -> None:
        return await self._call(self._store.delete, key)

    async def delete_dir(self, prefix: str) -> None:
        return await self._call(self._store.delete_dir, prefix)

    async def is_empty(self, prefix: str) -> bool:
        return await self._call(self._store.is_empty, prefix)

    async def clear(self) -> None:
        return await self._call(self._store.clear)

    async def getsize(self, key: str) -> int:
        return await self._call(self._store.getsize, key)

    def list(self) -> AsyncIterator[str]:
        return self._each(self._store.list())

    def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        return self._each(self._store.list_prefix(prefix))

    def list_dir(self, prefix: str) -> AsyncIterator[str]:
        return self._each(self._store.list_dir(prefix))
