"""Object storage through fsspec: atomic writes, retries for transient errors, clear permanent errors.

Any fsspec URI works (local paths, `s3://` through s3fs, `gs://`, ...). Credentials come only from the
environment or the provider's standard chain (for S3: env vars, `~/.aws`, instance roles); the job file's
`storage_options` may set endpoint, region, anonymous access or a profile, never a secret.
"""
from __future__ import annotations

import os
import random
import time
import uuid

import fsspec

# storage_options keys that would put a secret into a job file (and so into the saved spec).
SECRET_OPTIONS = {"key", "secret", "token", "password", "aws_access_key_id", "aws_secret_access_key",
                  "aws_session_token", "session_token", "access_key", "secret_key", "account_key", "sas_token"}
# Error codes that are worth a retry; s3fs reports them as OSError whose text carries the code.
TRANSIENT_MARKERS = ("SlowDown", "Throttl", "RequestTimeout", "InternalError", "ServiceUnavailable",
                     "503", "500", "502", "504", "Connection reset", "timed out", "Timeout")


class StorageError(RuntimeError):
    """A storage operation failed for good; the message names the operation and the URI."""


def protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    return fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return "file" in protocols(fs) or "local" in protocols(fs)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (PermissionError, FileNotFoundError, FileExistsError, IsADirectoryError)):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    text = f"{type(exc).__name__}: {exc}"
    return any(m in text for m in TRANSIENT_MARKERS)


def with_retries(operation: str, uri: str, fn, *, attempts: int = 6, base_delay: float = 0.25):
    """Run `fn()`; retry transient errors with exponential backoff and full jitter, fail fast on others."""
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - classified below
            if isinstance(e, FileExistsError):
                raise
            if not is_transient(e) or attempt == attempts - 1:
                raise StorageError(f"{operation} {uri} failed: {type(e).__name__}: {e}") from e
            time.sleep(random.uniform(0, base_delay * 2**attempt))


def filesystem(uri: str, storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    return fsspec.core.url_to_fs(uri, **(storage_options or {}))


def join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


def put_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write `data` so that readers see the old object or the whole new one, never a part.

    Object stores give this for a single PUT; a local filesystem needs a temp file and a rename.
    Temp files start with '.', which Parquet dataset readers and listings of the library skip.
    """
    def put():
        if is_local(fs):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = os.path.join(os.path.dirname(path), f".tmp-{uuid.uuid4().hex}")
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        else:
            fs.pipe_file(path, data)

    with_retries("write", fs.unstrip_protocol(path), put)


def put_exclusive(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Create `path` only if it does not exist; FileExistsError otherwise.

    Local: O_CREAT|O_EXCL. S3: a conditional PUT (If-None-Match: *). Other stores: check-then-put,
    which is not atomic.
    """
    def put():
        if is_local(fs):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        elif "s3" in protocols(fs):
            fs.pipe_file(path, data, mode="create")
        else:
            if fs.exists(path):
                raise FileExistsError(path)
            fs.pipe_file(path, data)

    with_retries("create", fs.unstrip_protocol(path), put)


def read_bytes(fs: fsspec.AbstractFileSystem, path: str) -> bytes:
    return with_retries("read", fs.unstrip_protocol(path), lambda: fs.cat_file(path))


def remove(fs: fsspec.AbstractFileSystem, path: str) -> None:
    def rm():
        try:
            fs.rm_file(path)
        except FileNotFoundError:
            pass
    with_retries("delete", fs.unstrip_protocol(path), rm)
