"""How variant rows travel: pickled Python dicts in one binary Arrow column.

Used on both sides: the driver writes plan objects in this form (pipeline/plan.py), and the Ray Data
operators (pipeline/graph.py) pass batches in it between stages. A row's fields change from stage to
stage (latents, then frames, then bytes), and per-stage Arrow schemas would only get in the way.
"""
from __future__ import annotations

import pickle

import pyarrow as pa

COLUMN = "row"


def rows_of(batch: pa.Table) -> list[dict]:
    return [pickle.loads(b) for b in batch.column(COLUMN).to_pylist()]


def table_of(rows: list[dict]) -> pa.Table:
    return pa.table({COLUMN: pa.array([pickle.dumps(r, protocol=5) for r in rows], pa.large_binary())})
