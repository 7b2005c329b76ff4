"""Weights from object storage, copied once per node into the local cache and loaded from there.

In: an fsspec URI (`s3://bucket/Wan2.1-T2V-14B-Diffusers/` for a checkpoint, or one LoRA file) and the job's
`storage_options`. Out:
- `remote_listing()`: every file under the URI with its size and ETag (or checksum), from the store's metadata;
- `remote_fingerprint()`: sha256 over that listing, the weights' identity for `params_hash`; no data is read;
- `stage()`: a local path holding those files, for `from_pretrained`.

`stage()` copies into `<cache>/staged/<sha256 of the URI>/` while holding an exclusive `fcntl.flock` on that
folder's `.lock`: concurrent actors on one node copy once, the others wait and reuse the copy. Each file is
downloaded to `<name>.part`, resumed from its current size by a ranged read when the part belongs to the same
object, checked against the listed size (and MD5), then renamed into place. `.complete`, which holds the
listing, is written last: a folder without a `.complete` that matches the store's current listing is never
returned, so a partial copy is never loaded and a changed object is staged again.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from pathlib import Path

from stages.common.locks import node_lock
from stages.common.storage import StorageError, filesystem, with_retries

log = logging.getLogger("rushes")

CHUNK = 32 << 20  # bytes per ranged read: few requests for a 30 GB checkpoint, little memory
COMPLETE, PROGRESS, LOCK = ".complete", ".progress.json", ".lock"
_MD5 = re.compile(r"^[0-9a-f]{32}$")


def cache_dir() -> Path:
    return Path(os.environ.get("RUSHES_CACHE", Path.home() / ".cache" / "rushes"))


def is_remote(path: str | None) -> bool:
    """An fsspec URI with a protocol other than the local filesystem's (not `builtin:`, not a hub id)."""
    if not path or "://" not in path:
        return False
    return path.split("://", 1)[0].lower() not in ("file", "local")


def _checksum(info: dict) -> str | None:
    """The store's own checksum of an object: S3's ETag, GCS's md5Hash or crc32c, else its modification time
    (a store without checksums: a rewritten object still changes it)."""
    for key in ("ETag", "etag", "md5Hash", "crc32c", "checksum", "LastModified", "mtime", "updated"):
        if info.get(key) is not None:
            return str(info[key]).strip('"')
    return None


def _listing(fs, root: str, uri: str) -> tuple[dict[str, dict], bool]:
    """(the listing, whether `uri` names one file)."""
    def find() -> tuple[dict[str, dict], bool]:
        fs.invalidate_cache()  # s3fs keeps listings: a changed object must be seen
        try:
            info = fs.info(root)
        except FileNotFoundError:
            return {}, False
        if info.get("type") == "file":
            return {root.rsplit("/", 1)[-1]: info}, True
        found = fs.find(root, detail=True)
        return {p[len(root) + 1:]: i for p, i in found.items()
                if i.get("type", "file") == "file" and p.startswith(root + "/") and not p.endswith("/")}, False

    files, single_file = with_retries("list", uri, find)
    if not files:
        raise FileNotFoundError(f"no objects under {uri}")
    listing = {rel: {"size": int(info.get("size") or 0), "etag": _checksum(info)}
               for rel, info in sorted(files.items())}
    return listing, single_file


def remote_listing(uri: str, storage_options: dict | None = None) -> dict[str, dict]:
    """{relative path: {"size", "etag"}} of every file under `uri`, sorted by path; a URI that names one file
    (a LoRA's .safetensors) lists that file under its own name. FileNotFoundError names the URI when nothing
    is there."""
    fs, root = filesystem(uri, storage_options)
    return _listing(fs, root.rstrip("/"), uri)[0]


def fingerprint_of_listing(listing: dict[str, dict]) -> str:
    h = hashlib.sha256()
    for rel, meta in sorted(listing.items()):
        h.update(f"{rel}\0{meta['size']}\0{meta['etag']}\n".encode())
    return h.hexdigest()


def remote_fingerprint(uri: str, storage_options: dict | None = None) -> str:
    """The weights' identity from the store's metadata alone (paths, sizes, ETags): nothing is downloaded."""
    return fingerprint_of_listing(remote_listing(uri, storage_options))


def staged_folder(uri: str) -> Path:
    return cache_dir() / "staged" / hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:32]


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, sort_keys=True))
    os.replace(tmp, path)  # a reader sees the old file or the new one, never a part


def _local_path(folder: Path, listing: dict[str, dict], single_file: bool) -> str:
    return str(folder / next(iter(listing))) if single_file else str(folder)


def stage(uri: str, storage_options: dict | None = None) -> str:
    """A local copy of the files under `uri`, made once per node: the folder (or, for a URI naming one file,
    that file) in the cache, holding exactly what the store lists now."""
    fs, root = filesystem(uri, storage_options)
    root = root.rstrip("/")
    listing, single_file = _listing(fs, root, uri)
    folder = staged_folder(uri)
    if _read_json(folder / COMPLETE) == listing:  # written last: no lock needed to trust it
        return _local_path(folder, listing, single_file)
    folder.mkdir(parents=True, exist_ok=True)
    with node_lock(folder / LOCK):
        if _read_json(folder / COMPLETE) == listing:  # another process on this node copied it meanwhile
            return _local_path(folder, listing, single_file)
        (folder / COMPLETE).unlink(missing_ok=True)
        start, copied = time.monotonic(), 0
        progress = _read_json(folder / PROGRESS) or {"done": {}, "parts": {}}
        for rel, meta in listing.items():
            if progress["done"].get(rel) == meta and (folder / rel).is_file():
                continue  # verified by an earlier copy of this very object
            source = root if single_file else f"{root}/{rel}"
            copied += _download(fs, source, folder / rel, meta, progress, folder)
        _remove_unlisted(folder, listing)
        _write_json(folder / COMPLETE, listing)
        total = sum(m["size"] for m in listing.values())
        log.info("staged %s: %d files, %.2f GB (%.2f GB copied) in %.1f s", uri, len(listing), total / 1e9,
                 copied / 1e9, time.monotonic() - start)
    return _local_path(folder, listing, single_file)


def _download(fs, source: str, target: Path, meta: dict, progress: dict, folder: Path) -> int:
    """Copy one object to `target` through `target.part`; returns the bytes read from the store."""
    rel = target.relative_to(folder).as_posix()
    part = target.with_name(target.name + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    if progress["parts"].get(rel) != meta:
        # A part left by a copy of another version of this object: its bytes cannot be continued.
        part.unlink(missing_ok=True)
        progress["done"].pop(rel, None)
        progress["parts"][rel] = meta
        _write_json(folder / PROGRESS, progress)
    uri = fs.unstrip_protocol(source)
    read = with_retries("read", uri, lambda: _fetch_part(fs, source, part, meta["size"]))
    _verify(part, meta, uri)
    os.replace(part, target)
    progress["parts"].pop(rel, None)
    progress["done"][rel] = meta
    _write_json(folder / PROGRESS, progress)
    return read


def _fetch_part(fs, source: str, part: Path, size: int) -> int:
    """Append to `part` from where it ends, by ranged reads; called again by `with_retries` after a transient
    error, it resumes from there too."""
    have = part.stat().st_size if part.exists() else 0
    if have > size:  # longer than the object: not a prefix of it
        part.unlink()
        have = 0
    start = have
    with open(part, "ab") as dst:
        while have < size:
            chunk = fs.cat_file(source, start=have, end=min(have + CHUNK, size))
            if not chunk:
                break
            dst.write(chunk)
            dst.flush()  # what is on disk is where a resumed copy starts
            have += len(chunk)
        os.fsync(dst.fileno())
    return have - start


def _verify(part: Path, meta: dict, uri: str) -> None:
    """The part is the object: its size, and its MD5 when the ETag is one. S3 gives the body's MD5 as the ETag
    of a single-part upload only; a multipart upload's ETag ends in `-<parts>` and is checked by size alone."""
    size = part.stat().st_size
    problem = None
    if size != meta["size"]:
        problem = f"{size} bytes copied, the store lists {meta['size']}"
    elif meta["etag"] and _MD5.match(meta["etag"]):
        md5 = hashlib.md5(usedforsecurity=False)
        with open(part, "rb") as fh:
            for chunk in iter(lambda: fh.read(CHUNK), b""):
                md5.update(chunk)
        if md5.hexdigest() != meta["etag"]:
            problem = f"MD5 {md5.hexdigest()} differs from its ETag {meta['etag']}"
    if problem:
        part.unlink()  # never kept: the next attempt copies it again from the start
        raise StorageError(f"stage {uri} failed: {problem}")


def _remove_unlisted(folder: Path, listing: dict[str, dict]) -> None:
    """Files of an earlier version that the store no longer lists (from_pretrained would see them)."""
    for path in sorted(folder.rglob("*"), reverse=True):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and rel not in listing and rel not in (COMPLETE, PROGRESS, LOCK):
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
