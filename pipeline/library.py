"""Reading a library's state: the current record of every (id, variant).

    from pipeline.library import read_records
    table = read_records("s3://bucket/library", {"endpoint_url": ...})   # a pyarrow.Table

Every run appends Parquet parts under `metadata/`; a variant regenerated or retried later has several
records there. `read_records` keeps the latest committed one per key: (id, variant) for generated
variants, (id, -1) for invalid rows (by manifest row when the id itself is missing).
"""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.commit import RECORD_SCHEMA
from pipeline.storage import filesystem, join, with_retries


def record_key(rec: dict) -> tuple:
    if rec["id"] is None:
        return ("#row", rec["row"])
    return (rec["id"], rec["variant"])


def read_all_records(output: str, storage_options: dict | None = None) -> pa.Table:
    """Every committed record of every run, oldest part first."""
    fs, root = filesystem(output, storage_options)
    meta = join(root, "metadata")
    files = sorted(with_retries("list", fs.unstrip_protocol(meta), lambda: fs.glob(f"{meta}/part-*.parquet")))
    if not files:
        return RECORD_SCHEMA.empty_table()
    tables = [with_retries("read", fs.unstrip_protocol(f), lambda f=f: pq.read_table(f, filesystem=fs))
              for f in files]
    # Runs over different manifests may carry different extra columns: unify, filling nulls.
    return pa.concat_tables(tables, promote_options="permissive")


def read_records(output: str, storage_options: dict | None = None) -> pa.Table:
    """One current record per (id, variant): the latest committed, as a pyarrow Table."""
    table = read_all_records(output, storage_options)
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


def current_state(output: str, storage_options: dict | None = None) -> dict[tuple, dict]:
    """key -> {status, params_hash, error, phash} of the current records: what a re-run compares against."""
    table = read_records(output, storage_options)
    if table.num_rows == 0:
        return {}
    columns = [c for c in ("id", "variant", "row", "status", "params_hash", "error", "phash")
               if c in table.column_names]  # libraries written before phash existed lack it
    rows = table.select(columns).to_pylist()
    return {record_key(r): r for r in rows}
