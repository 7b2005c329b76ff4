"""Compaction: rewrite a library's many small metadata parts into a few large ones, losing nothing.

    rushes compact OUTPUT [--storage-option K=V ...] [--target-records N] [--force]
    from pipeline.compact import compact; compact("s3://bucket/library", {"endpoint_url": ...})

Every committed batch of every run is one Parquet part under `metadata/`, so after a thousand nightly
runs a reader pays thousands of GETs. `compact` takes the output's lease as a run does (while a run
holds it, LeaseHeld; while compact holds it, no run starts). It reads the parts in commit order and
writes their records into parts of `target_records` records, in the same order. It keeps every record,
superseded history included, and unifies the extra columns as `read_all_records` does. Full parts left
by an earlier compaction, at the head of the list, are kept as they are.

New parts are named like a run's: `part-<id>-<seq>.parquet`, with the id
`<UTC time to the microsecond>-compact-<6 hex>`. Run ids start with their UTC start time, so the new
parts sort after those of earlier runs and before those of later runs. Name order therefore stays
commit order, which decides between records committed at the same instant.

Crash safety. Writing the new parts and then deleting the old ones is not enough on its own: a kill
between the two would leave every record twice. One small marker, `metadata/_compaction.json`, is what
readers honour (`pipeline.library.metadata_parts`):

1. `{"id", "replaces": [old part names], "parts": null}`, written before the first new part. Readers
   leave out every `part-<id>-*`, so a kill while writing loses nothing and doubles nothing.
2. The new parts, each in one atomic write.
3. `{"id", "replaces", "parts": [new part names]}`: the commit point. From here readers leave out the
   replaced parts instead. A reader whose listing lacks some of the new parts lists again.
4. The replaced parts are removed, then the marker.

A compaction killed at any step leaves the records read exactly as they were. The next `compact` first
completes (killed after step 3: removes the replaced parts) or undoes (killed before: removes the new
parts) what the marker describes. Readers read the marker after listing, and list again when a listed
part has gone. So a reader running during a compaction also gets every record exactly once. Run ids
must stay unique per output (the default, a timestamp and a random suffix, is): until a killed
compaction is finished, its marker names the parts it replaces.
"""
from __future__ import annotations

import io
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.lease import Lease
from pipeline.library import (COMPACTION_MARKER, READ_WORKERS, is_compacted, metadata_parts,
                              read_compaction_marker, read_in_order, read_part_tables)
from stages.common.storage import StorageError, filesystem, join, put_atomic, remove, with_retries

TARGET_RECORDS = 100_000  # a part of about 10-50 MB: few GETs, and a bounded buffer while writing


@dataclass
class Compaction:
    output: str
    parts_before: int
    parts_after: int
    records: int  # every record in the library, before and after
    rewritten: int  # parts read and rewritten (the others were full compacted parts, kept)
    finished: str | None = None  # what was done about an interrupted compaction, if one was found

    def render(self) -> str:
        lines = [f"[rushes] {self.finished}"] if self.finished else []
        lines.append(f"library {self.output}: {self.parts_before} metadata parts -> {self.parts_after}, "
                     f"{self.records} records (every one kept; {self.rewritten} parts rewritten)")
        return "\n".join(lines)


def compaction_id() -> str:
    # Microseconds: two compactions within a second still sort in order ('.' sorts before a run id's 'Z').
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S.%fZ}-compact-{uuid.uuid4().hex[:6]}"


def compact(output: str, storage_options: dict | None = None, target_records: int = TARGET_RECORDS, *,
            force: bool = False, lease_ttl_s: float = 120.0, workers: int = READ_WORKERS) -> Compaction:
    """Rewrite the library's metadata parts into parts of `target_records` records. Raises LeaseHeld
    while a run (or another compaction) holds the output; `force` takes its lease over."""
    if target_records < 1:
        raise ValueError(f"target_records must be at least 1, not {target_records}")
    cid = compaction_id()
    lease = Lease(output, cid, lease_ttl_s, storage_options)
    lease.acquire(force=force)
    try:
        fs, root = filesystem(output, storage_options)
        meta = join(root, "metadata")
        finished = finish_interrupted(fs, meta, workers)
        _, files = metadata_parts(output, storage_options)
        keep = full_compacted_prefix(fs, files, target_records, f"part-{cid}-")
        todo = files[len(keep):]
        if len(todo) <= 1:  # nothing to merge
            records = sum(part_rows(fs, f) for f in files)
            return Compaction(output, len(files), len(files), records, 0, finished)
        replaces = [name_of(f) for f in todo]
        lease.check()
        write_marker(fs, meta, {"id": cid, "replaces": replaces, "parts": None})
        written, records = [], sum(part_rows(fs, f) for f in keep)
        for table in rebatch(read_part_tables(fs, todo, workers), target_records):
            lease.check()
            path = join(meta, f"part-{cid}-{len(written):06d}.parquet")
            buf = io.BytesIO()
            pq.write_table(table, buf)
            put_atomic(fs, path, buf.getvalue())
            written.append(name_of(path))
            records += table.num_rows
        lease.check()
        write_marker(fs, meta, {"id": cid, "replaces": replaces, "parts": written})  # the commit point
        remove_all(fs, [join(meta, n) for n in replaces], workers)
        remove(fs, join(meta, COMPACTION_MARKER))
        return Compaction(output, len(files), len(keep) + len(written), records, len(todo), finished)
    finally:
        lease.release()


def finish_interrupted(fs, meta: str, workers: int) -> str | None:
    """Complete or undo what a killed compaction left, from its marker; None when there is none."""
    marker = read_compaction_marker(fs, meta)
    if marker is None:
        return None
    cid = marker["id"]
    if marker["parts"] is not None:  # it had committed: its new parts hold every replaced record
        missing = [n for n in marker["parts"] if not with_retries("stat", fs.unstrip_protocol(join(meta, n)),
                                                                   lambda n=n: fs.exists(join(meta, n)))]
        if missing:
            raise StorageError(f"compaction {cid} committed parts that are now missing: {missing[:3]}; "
                               f"its marker {fs.unstrip_protocol(join(meta, COMPACTION_MARKER))} is left as is")
        remove_all(fs, [join(meta, n) for n in marker["replaces"]], workers)
        remove(fs, join(meta, COMPACTION_MARKER))
        return f"finished interrupted compaction {cid}: removed the {len(marker['replaces'])} parts it replaced"
    fs.invalidate_cache(meta)
    partial = with_retries("list", fs.unstrip_protocol(meta), lambda: fs.glob(join(meta, f"part-{cid}-*.parquet")))
    remove_all(fs, partial, workers)
    remove(fs, join(meta, COMPACTION_MARKER))
    return f"undid interrupted compaction {cid}: removed its {len(partial)} unfinished parts"


def rebatch(tables, target_records: int):
    """Tables of exactly `target_records` rows (the last one fewer), in order, from tables of any size.
    Extra columns are unified as `read_all_records` unifies them: missing ones become nulls."""
    held, rows = [], 0
    for table in tables:
        held.append(table)
        rows += table.num_rows
        while rows >= target_records:
            merged = pa.concat_tables(held, promote_options="permissive")
            yield merged.slice(0, target_records)
            held, rows = [merged.slice(target_records)], rows - target_records
    if rows:
        yield pa.concat_tables(held, promote_options="permissive")


def full_compacted_prefix(fs, files: list, target_records: int, new_prefix: str) -> list:
    """The leading parts left by an earlier compaction that are full already: kept as they are, as long
    as the new parts' names sort after them (commit order)."""
    keep = []
    for f in files:
        name = name_of(f)
        if not is_compacted(name) or name >= new_prefix or part_rows(fs, f) < target_records:
            break
        keep.append(f)
    return keep


def part_rows(fs, path: str) -> int:
    def rows():
        with fs.open(path, "rb") as fh:
            return pq.ParquetFile(fh).metadata.num_rows
    return with_retries("read", fs.unstrip_protocol(path), rows)


def write_marker(fs, meta: str, marker: dict) -> None:
    put_atomic(fs, join(meta, COMPACTION_MARKER), json.dumps(marker).encode())


def remove_all(fs, paths: list, workers: int) -> None:
    for _ in read_in_order(lambda p: remove(fs, p), paths, workers):
        pass


def name_of(path: str) -> str:
    return path.rsplit("/", 1)[-1]
