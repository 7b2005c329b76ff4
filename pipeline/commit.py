"""Committing records, in the driver: the only writer of metadata.

Layout under the output URI:
    metadata/part-<run_id>-<seq>.parquet   (one object per committed batch of records)
    runs/<run_id>/job.yaml, summary.txt    (the resolved job spec; the run's summary)

Order of writes: the workers write a variant's objects (stages/write.py) and only then return its
record; the driver alone writes records, one Parquet object per committed batch, atomically. A reader
that follows the metadata therefore never meets a missing or half-written video. Records wait in a
`CommitBuffer` until `commit.max_records` are ready or the oldest has waited `commit.max_wait_s`.
"""
from __future__ import annotations

import io
import time
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq

from stages.common.storage import filesystem, join, put_atomic
from stages.common.variant import RECORD_SCHEMA


def record_schema(extra: pa.Schema) -> pa.Schema:
    """The core record fields plus the manifest's extra columns, carried through with their types."""
    clashing = [f.name for f in extra if f.name in RECORD_SCHEMA.names]
    fields = list(RECORD_SCHEMA) + [f if f.name not in clashing else pa.field(f"manifest_{f.name}", f.type)
                                    for f in extra]
    return pa.schema(fields)


def invalid_record(row: dict) -> dict:
    return {"row": row["row"], "id": row["id"], "variant": -1, "prompt": row["prompt"], "status": "invalid",
            "error": row["error"], "extra": row["extra"]}


class MetadataWriter:
    """Driver side: the only writer of records; one atomic Parquet object per committed batch."""

    def __init__(self, output: str, run_id: str, schema: pa.Schema, storage_options: dict | None = None):
        self.fs, self.root = filesystem(output, storage_options)
        self.run_id, self.schema, self.seq = run_id, schema, 0

    def commit(self, records: list[dict]) -> str | None:
        if not records:
            return None
        now = datetime.now(timezone.utc)
        rows = []
        for rec in records:
            flat = {k: v for k, v in rec.items() if k != "extra"}
            for k, v in (rec.get("extra") or {}).items():
                flat[k if k not in RECORD_SCHEMA.names else f"manifest_{k}"] = v
            flat["committed_at"] = now
            flat["run_id"] = self.run_id  # the run that commits a record owns it (invalid rows too)
            rows.append(flat)
        table = pa.Table.from_pylist(rows, schema=self.schema)
        buf = io.BytesIO()
        pq.write_table(table, buf)
        path = join(self.root, "metadata", f"part-{self.run_id}-{self.seq:06d}.parquet")
        put_atomic(self.fs, path, buf.getvalue())
        self.seq += 1
        return path

    def save_text(self, relpath: str, text: str) -> str:
        path = join(self.root, relpath)
        put_atomic(self.fs, path, text.encode())
        return self.fs.unstrip_protocol(path)


class CommitBuffer:
    """Records wait here until `commit.max_records` are ready or the oldest has waited `commit.max_wait_s`:
    one metadata object per few hundred records instead of one per Ray Data block (a block is one
    sample batch, a few variants), which keeps the library's object count and its read-back time down."""

    def __init__(self, writer: MetadataWriter, max_records: int, max_wait_s: float, on_commit=None):
        self.writer, self.max_records, self.max_wait_s = writer, max_records, max_wait_s
        self.on_commit = on_commit  # called with each committed list of records, after the commit
        self.records: list[dict] = []
        self.since = 0.0
        self.committed = 0

    def add(self, records: list[dict]) -> None:
        if records and not self.records:
            self.since = time.monotonic()
        self.records += records
        if self.records and time.monotonic() - self.since >= self.max_wait_s:
            self.flush()
        while len(self.records) >= self.max_records:
            self._commit(self.max_records)
        if not self.records:
            self.since = 0.0

    def flush(self) -> None:
        while self.records:
            self._commit(self.max_records)

    def _commit(self, n: int) -> None:
        done = self.records[:n]
        self.writer.commit(done)
        self.committed += len(done)
        self.records = self.records[n:]
        self.since = time.monotonic()
        if self.on_commit:
            self.on_commit(done)
