"""Reading a library's state: the current record of every (id, variant).

    from pipeline.library import read_records
    table = read_records("s3://bucket/library", {"endpoint_url": ...})   # a pyarrow.Table

Every run appends Parquet parts under `metadata/`; a variant regenerated or retried later has several
records there. `read_records` keeps the latest committed one per key: (id, variant) for generated
variants, (id, -1) for invalid rows (by manifest row when the id itself is missing). Parts are read
`READ_WORKERS` at a time and kept in commit order; `rushes compact` (pipeline/compact.py) merges them
into a few large ones.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from itertools import islice

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from stages.common.variant import RECORD_SCHEMA, STATE_COLUMNS, STATUSES
from stages.common.storage import StorageError, filesystem, join, with_retries


def record_key(rec: dict) -> tuple:
    if rec["id"] is None:
        return ("#row", rec["row"])
    return (rec["id"], rec["variant"])


READ_WORKERS = 16  # parts read at once: on S3 a small part costs a round trip, not bandwidth
COMPACTION_MARKER = "_compaction.json"  # written by pipeline/compact.py while it replaces parts
CHANGE_RETRIES = 5  # re-reads when a compaction changes the parts under a reader


class LibraryChanged(Exception):
    """The parts changed while they were read (a compaction ran meanwhile): list them again."""


def metadata_parts(output: str, storage_options: dict | None = None) -> tuple:
    """(filesystem, the library's metadata objects in commit order).

    Honours the marker of a compaction in progress or interrupted (pipeline/compact.py): before it
    declares its new parts complete they are left out; after, the parts they replace are. The marker
    is read after the listing, so a listing older than the marker's state shows up as a missing part
    (LibraryChanged) when it is read, never as a lost or doubled record.
    """
    fs, root = filesystem(output, storage_options)
    meta = join(root, "metadata")
    fs.invalidate_cache(meta)  # s3fs may answer a listing from its cache, which other processes make stale
    listed = with_retries("list", fs.unstrip_protocol(meta), lambda: fs.glob(f"{meta}/part-*.parquet"))
    parts = {p.rsplit("/", 1)[-1]: p for p in listed}
    marker = read_compaction_marker(fs, meta)
    if marker:
        if marker["parts"] is None:  # still writing: its new parts are not all there
            parts = {n: p for n, p in parts.items() if not n.startswith(f"part-{marker['id']}-")}
        elif set(marker["parts"]) <= parts.keys():  # written in full: they hold the replaced parts' records
            replaced = set(marker["replaces"])
            parts = {n: p for n, p in parts.items() if n not in replaced}
        else:  # written in full, yet not all listed: this listing predates them
            raise LibraryChanged(f"{fs.unstrip_protocol(meta)}: not all of compaction {marker['id']}'s parts "
                                 "are listed")
    return fs, sorted(parts.values())


def is_compacted(path: str) -> bool:
    """Whether a part was written by `rushes compact` (`part-<time>-compact-<hex>-<seq>.parquet`)."""
    return "-compact-" in path.rsplit("/", 1)[-1]


def read_compaction_marker(fs, meta: str) -> dict | None:
    path = join(meta, COMPACTION_MARKER)

    def read():
        try:
            return fs.cat_file(path)
        except FileNotFoundError:
            return None
    data = with_retries("read", fs.unstrip_protocol(path), read)
    return json.loads(data) if data else None


def read_part(fs, path: str, read):
    """read(path), retried; a part gone since it was listed raises LibraryChanged."""
    try:
        return with_retries("read", fs.unstrip_protocol(path), lambda: read(path))
    except StorageError as e:
        if isinstance(e.__cause__, FileNotFoundError):
            raise LibraryChanged(f"{fs.unstrip_protocol(path)} was removed while the library was read") from e
        raise


def read_in_order(read, paths: list, workers: int = READ_WORKERS):
    """Yield read(path) for each path, in order, running up to `workers` reads at once.

    At most `workers` results wait to be consumed, so memory stays bounded by `workers` parts."""
    if workers <= 1:
        yield from map(read, paths)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="rushes-read") as pool:
        todo = iter(paths)
        pending = deque(pool.submit(read, p) for p in islice(todo, workers))
        try:
            while pending:
                result = pending.popleft().result()
                pending.extend(pool.submit(read, p) for p in islice(todo, 1))
                yield result
        finally:
            for future in pending:
                future.cancel()


def fetch(fs, path: str) -> pa.BufferReader:
    """A whole object in one GET (a range from 0: s3fs's plain cat_file asks for the size first)."""
    return pa.BufferReader(fs.cat_file(path, start=0))


def read_part_tables(fs, files: list, workers: int = READ_WORKERS, columns: list[str] | None = None):
    """Each part as a table, in commit order: whole, or only those of `columns` that it has."""
    def read(path):
        if columns is None:
            return pq.read_table(fetch(fs, path))
        part = pq.ParquetFile(fetch(fs, path))
        return part.read(columns=[c for c in columns if c in part.schema_arrow.names])
    return read_in_order(lambda f: read_part(fs, f, read), files, workers)


def until_unchanged(output: str, read):
    """read(), again from the listing while a compaction changes the parts under it."""
    for attempt in range(CHANGE_RETRIES):
        try:
            return read()
        except LibraryChanged as e:
            if attempt == CHANGE_RETRIES - 1:
                raise StorageError(f"read {output} failed: its metadata kept changing ({e})") from e
            time.sleep(0.2 * 2**attempt)


def read_all_records(output: str, storage_options: dict | None = None, workers: int = READ_WORKERS,
                     columns: list[str] | None = None) -> pa.Table:
    """Every committed record of every run, oldest part first; `workers` parts are read at once.
    `columns`: only these (those that no part has are left out)."""
    def read() -> pa.Table:
        fs, files = metadata_parts(output, storage_options)
        if not files:
            empty = RECORD_SCHEMA.empty_table()
            return empty.select([c for c in columns if c in empty.column_names]) if columns else empty
        # Runs over different manifests may carry different extra columns: unify, filling nulls.
        return pa.concat_tables(list(read_part_tables(fs, files, workers, columns)), promote_options="permissive")
    return until_unchanged(output, read)


def read_records(output: str, storage_options: dict | None = None, workers: int = READ_WORKERS,
                 columns: list[str] | None = None) -> pa.Table:
    """One current record per (id, variant): the latest committed, as a pyarrow Table (with `columns`: only
    those, plus the key and commit time)."""
    if columns is not None:
        columns = list(dict.fromkeys([*columns, "id", "variant", "row", "committed_at"]))
    table = read_all_records(output, storage_options, workers, columns)
    if table.num_rows == 0:
        return table
    cols = table.select(["id", "variant", "row", "committed_at"]).to_pylist()
    latest: dict[tuple, tuple] = {}
    for i, rec in enumerate(cols):
        key = record_key(rec)
        stamp = (rec["committed_at"], i)
        if key not in latest or stamp >= latest[key][0]:
            latest[key] = (stamp, i)
    return table.take(sorted(i for _, i in latest.values()))


def digest16(text: str) -> bytes:
    """16 bytes that stand for `text` in the compact state (ids, record keys, error messages)."""
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def key_digest(key: tuple) -> bytes:
    """A record key's digest ('#row' cannot start an id)."""
    return digest16(f"{key[0]}\x00{key[1]}")


STATUS_CODES = {status: code for code, status in enumerate(STATUSES, start=1)}  # stored as uint8


def hex_bytes(value: str | None, size: int) -> bytes:
    try:
        raw = bytes.fromhex(value or "")
    except ValueError:
        raw = b""
    return raw if len(raw) == size else b""


class LibraryState:
    """The current record of every key of a library, as sorted numpy arrays: what a re-run compares against.

    About 70 bytes per record (100 more with perceptual hashes), instead of a Python dict per record: a
    nightly run over a library of millions of records does not grow its driver by gigabytes. Metadata
    objects are fetched a few at once (only the columns it needs) and compacted one at a time.
    """

    def __init__(self, keys, status, params, errors, phash, names):
        self.keys, self.status, self.params, self.errors = keys, status, params, errors
        self.phash, self.names = phash, names
        self.superseded = np.zeros(len(keys), bool)  # regenerated by this run: no longer a kept video

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def load(cls, output: str, storage_options: dict | None = None, with_phash: bool = True,
             workers: int = READ_WORKERS) -> "LibraryState":
        def to_arrays(t: pa.Table) -> tuple:
            cols = {c: t.column(c).to_pylist() if c in t.column_names else [None] * t.num_rows
                    for c in STATE_COLUMNS if c != "committed_at"}
            keys = [record_key({"id": i, "variant": v, "row": r})
                    for i, v, r in zip(cols["id"], cols["variant"], cols["row"])]
            return (
                np.array([key_digest(k) for k in keys], "S16"),
                t.column("committed_at").cast(pa.int64()).fill_null(0).to_numpy().astype(np.int64),
                np.array([STATUS_CODES.get(x, 0) for x in cols["status"]], np.uint8),
                np.array([hex_bytes(x, 32) for x in cols["params_hash"]], "S32"),
                np.array([digest16(x) if x else b"" for x in cols["error"]], "S16"),
                np.array([(x or "").encode() if with_phash and st == "accepted" else b""
                          for x, st in zip(cols["phash"], cols["status"])], "S64"),
                pa.array([f"{k[0]}/{k[1]}" for k in keys], pa.large_string()),
            )

        def read_all() -> list[tuple]:
            fs, files = metadata_parts(output, storage_options)

            def read(f):
                # A run's part is one commit batch, small: one GET. A compacted part is large: only the
                # state columns' byte ranges.
                with (fs.open(f, "rb") if is_compacted(f) else fetch(fs, f)) as fh:
                    pf = pq.ParquetFile(fh)
                    return pf.read(columns=[c for c in STATE_COLUMNS if c in pf.schema_arrow.names])
            # `workers` parts are fetched at once; each becomes arrays here, in commit order,
            # before the next is taken, so at most `workers` parts' raw columns are held.
            return [to_arrays(t) for t in read_in_order(lambda f: read_part(fs, f, read), files, workers)]

        parts = until_unchanged(output, read_all)
        if not parts:
            empty = lambda dt: np.zeros(0, dt)  # noqa: E731
            return cls(empty("S16"), empty(np.uint8), empty("S32"), empty("S16"), empty("S64"),
                       pa.array([], pa.large_string()))
        keys, stamps, status, params, errors, phash = (np.concatenate([p[i] for p in parts]) for i in range(6))
        names = pa.concat_arrays([p[6] for p in parts])
        ords = np.arange(len(keys))  # commit order: parts in order, rows in order within each
        del parts
        order = np.lexsort((ords, stamps, keys))  # by key, then commit time, then commit order
        keys = keys[order]
        last = np.flatnonzero(np.r_[keys[1:] != keys[:-1], True])  # the latest record of each key
        pick = order[last]
        return cls(keys[last], status[pick], params[pick], errors[pick], phash[pick], names.take(pa.array(pick)))

    def find(self, keys: list[tuple]) -> np.ndarray:
        """Positions of `keys` in the state, -1 where a key has no record."""
        if not len(keys):
            return np.zeros(0, np.int64)
        wanted = np.array([key_digest(k) for k in keys], "S16")
        pos = np.searchsorted(self.keys, wanted)
        inside = pos < len(self.keys)
        hit = np.zeros(len(keys), bool)
        hit[inside] = self.keys[pos[inside]] == wanted[inside]
        return np.where(hit, pos, -1)

    def kept_videos(self):
        """(name 'id/variant', phash) of accepted videos with a hash that this run does not regenerate."""
        for i in np.flatnonzero((self.status == STATUS_CODES["accepted"]) & (self.phash != b"") & ~self.superseded):
            yield self.names[int(i)].as_py(), self.phash[i].decode()
