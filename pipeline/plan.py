"""Planning a run without holding its manifest: which variants to generate, streamed to the output.

In: the JobSpec and the library's current state. Out, batch by batch: the invalid rows that need a
record, and the variants to generate, which `PlanSpill` writes to the output as plan objects of a few
hundred variants each (`runs/<run_id>/plan/<round>/<seq>.parquet`). Ray Data then reads one plan object
per task (pipeline.graph), so neither the driver nor Ray's object store ever holds the whole manifest:
the driver keeps about 16 bytes per manifest row (id digests, for duplicate ids) and the compact library
state (pipeline.library.LibraryState), whatever the manifest's size.

Per variant, against the current committed record of the same (id, variant):
- same `params_hash` and accepted/rejected: skipped, no model is loaded for it;
- `failed` (same parameters): retried;
- different `params_hash` (new weights, steps, prompt, ...): regenerated;
- no record: new.
Invalid rows are recorded once; an unchanged invalid row is not recorded again.

The order of work (`order: longest_first`): `PlanSpill` keeps one stream of plan objects per cost class (a
quarter octave of `sampling_cost`, a variant's denoising work up to a constant) and lists the dearest classes'
objects first, so that minute-long videos start first and short ones fill the GPUs at the end, instead of a long
video starting last and keeping one GPU busy alone. Within a class the manifest's order holds. The order decides
nothing about a variant: its params_hash and seed are set before, and resume compares them alone.
"""
from __future__ import annotations

import io
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.library import STATUS_CODES, LibraryState, digest16, hex_bytes, record_key
from pipeline.manifest import Manifest, RowValidator, duplicate_ids
from pipeline.rows import table_of
from pipeline.spec import JobSpec, JobSpecError
from stages.common.storage import filesystem, join, put_atomic, with_retries
from stages.models.checkpoints import model_identity
from stages.models.references import check_references
from stages.common.variant import DONE, params_hash, sampling_params, variants_of
from stages.long_video.windows import shot_latents, windows_for

MANIFEST_BATCH = 1024  # manifest rows the driver validates and expands at a time
PLAN_OBJECT_ROWS = 256  # variants per plan object: one Ray Data read task each
DONE_CODES = tuple(STATUS_CODES[s] for s in DONE)


@dataclass
class PlannedBatch:
    first_row: int
    valid: int  # valid manifest rows
    invalid: list[dict]  # every invalid row of the batch
    to_record: list[dict]  # the invalid rows whose record is missing or says something else
    variants: int  # variants the valid rows expand to
    todo: list[dict] = field(default_factory=list)  # variants to generate


class Planner:
    """Streams the manifest through validation, expansion and the resume rule, one batch at a time."""

    def __init__(self, spec: JobSpec, state: LibraryState | None = None, batch_rows: int = MANIFEST_BATCH):
        self.spec = spec.resolved()
        self.state = state
        self.batch_rows = batch_rows
        m = self.spec.model
        # every model reference, before the manifest is read or any worker starts (stages/models/references.py)
        problems, self.warnings = check_references(m, self.spec.family, self.spec.storage_options)
        if problems:
            raise JobSpecError("the job's model cannot be used:\n  " + "\n  ".join(problems))
        self.manifest = Manifest(self.spec.manifest, self.spec.storage_options)
        self.model = model_identity(m.family, m.path, m.revision, m.dtype, m.loras, self.spec.storage_options)
        # What decides pixels besides the variant's own fields: the model and each stage's pixel options.
        self.pixel_settings = {"model": self.model}
        for options in self.spec.stage_options().values():
            self.pixel_settings.update(options.pixel_settings())
        self.stages = [cls(getattr(self.spec, cls.name)) for cls in self.spec.stages]  # their driver-side `plan`
        matrix = self.spec.variants
        self.cells = matrix.cells(self.spec.matrix_sizes()) if matrix else None
        self.work: Counter = Counter()  # variants: new, skipped, retried, regenerated

    def batches(self) -> Iterator[PlannedBatch]:
        """Reads the manifest twice: once only its `id` column (duplicate ids), then whole, in batches."""
        duplicates = duplicate_ids(t.column("id").to_pylist()
                                   for t in self.manifest.batches(["id"], batch_size=8 * self.batch_rows))
        validator = RowValidator(self.spec, self.manifest.columns, duplicates, self.manifest.base)
        start = 0
        for table in self.manifest.batches(batch_size=self.batch_rows):
            rows = validator.validate(table, start)
            variants = []
            for row in rows.valid:
                mine = variants_of(row, self.cells)
                for stage in self.stages:
                    stage.plan(row, mine)
                variants += mine
            for v in variants:
                v["params_hash"] = params_hash(self.pixel_settings, v)
            batch = PlannedBatch(start, len(rows.valid), rows.invalid, self._invalid_to_record(rows.invalid),
                                 len(variants))
            batch.todo = self._select(variants)
            start += table.num_rows
            yield batch

    def _select(self, variants: list[dict]) -> list[dict]:
        if self.state is None or not len(self.state):
            self.work["new"] += len(variants)
            return variants
        pos = self.state.find([(v["id"], v["variant"]) for v in variants])
        planned = np.array([hex_bytes(v["params_hash"], 32) for v in variants], "S32")
        todo = []
        for v, p, h in zip(variants, pos, planned):
            if p < 0:
                self.work["new"] += 1
            elif self.state.params[p] != h:
                self.work["regenerated"] += 1
                self.state.superseded[p] = True  # its old video is about to be replaced
            elif self.state.status[p] in DONE_CODES:
                self.work["skipped"] += 1
                continue
            else:
                self.work["retried"] += 1
            todo.append(v)
        return todo

    def _invalid_to_record(self, invalid: list[dict]) -> list[dict]:
        if self.state is None or not len(self.state) or not invalid:
            return list(invalid)
        pos = self.state.find([record_key({**r, "variant": -1}) for r in invalid])
        errors = np.array([digest16(r["error"]) for r in invalid], "S16")
        return [r for r, p, e in zip(invalid, pos, errors) if p < 0 or self.state.errors[p] != e]


def sampling_cost(v: dict, family) -> float:
    """A variant's denoising work up to a constant, to order the work by (never part of what the variant is): the
    denoiser's tokens (latent frames x H/8 x W/8) summed over its windows, x steps, x 2 with a negative pass."""
    t = family.temporal_stride
    if family.extends and v.get("base_num_frames") and (v["num_frames"] > v["base_num_frames"] or v.get("shots")):
        shots = v.get("shots")
        per_shot = shot_latents([s["duration_s"] for s in shots], v["fps"], t) if shots else None
        frames = sum(w for w, _, _ in windows_for(v["num_frames"], v["base_num_frames"], v.get("overlap_history"),
                                                   per_shot, t))
    else:
        frames = (v["num_frames"] - 1) // t + 1
    passes = 2 if family.negative_pass(sampling_params(v)) else 1
    return float(frames * (v["height"] // 8) * (v["width"] // 8) * v["num_inference_steps"] * passes)


def cost_class(cost: float) -> int:
    """Quarter octaves: variants within about 19% of each other's cost share a class (and keep their order)."""
    return math.floor(4 * math.log2(max(cost, 1e-9)))


class PlanSpill:
    """Variants waiting to be generated, written to the output in objects of `rows_per_object` variants:
    `runs/<run_id>/plan/<round>/<seq>.parquet`. `close()` lists them, for `pipeline.graph` to read back: with a
    `cost` (variant -> its sampling_cost), one stream per cost class, the dearest class's objects first; without,
    in the order added."""

    def __init__(self, output: str, run_id: str, round_: int, storage_options: dict | None = None,
                 rows_per_object: int = PLAN_OBJECT_ROWS, cost=None):
        self.fs, root = filesystem(output, storage_options)
        self.folder = join(root, "runs", run_id, "plan", f"{round_:03d}")
        self.rows_per_object = rows_per_object
        self.cost = cost
        self.buffers: dict[int, list[dict]] = {}  # cost class -> variants not written yet (a few per class)
        self.written: list[tuple[int, int, str]] = []  # (-cost class, sequence, URI) of each plan object
        self.count = 0

    def add(self, rows: list[dict]) -> None:
        for row in rows:
            c = cost_class(self.cost(row)) if self.cost else 0
            buffer = self.buffers.setdefault(c, [])
            buffer.append(row)
            if len(buffer) >= self.rows_per_object:
                self._flush(c)
        self.count += len(rows)

    def close(self) -> list[str]:
        for c in list(self.buffers):
            self._flush(c)
        return [uri for _, _, uri in sorted(self.written)]

    def _flush(self, c: int) -> None:
        rows = self.buffers.pop(c, [])
        if not rows:
            return
        buf = io.BytesIO()
        pq.write_table(table_of(rows), buf)
        path = join(self.folder, f"{len(self.written):06d}.parquet")
        put_atomic(self.fs, path, buf.getvalue())
        self.written.append((-c, len(self.written), self.fs.unstrip_protocol(path)))


def read_plan_object(uri: str, storage_options: dict | None = None) -> pa.Table:
    fs, path = filesystem(uri, storage_options)
    return with_retries("read", uri, lambda: pq.read_table(path, filesystem=fs))


def remove_plans(output: str, storage_options: dict | None = None, run_id: str = "*") -> int:
    """Remove the plan objects of run `run_id` (all runs: '*'), once they are no longer read. Returns how
    many plan folders went. Plans hold no results: removing one never loses work."""
    fs, root = filesystem(output, storage_options)
    pattern = join(root, "runs", run_id, "plan")
    folders = with_retries("list", fs.unstrip_protocol(pattern), lambda: fs.glob(pattern))
    for folder in folders:
        with_retries("delete", fs.unstrip_protocol(folder), lambda folder=folder: fs.rm(folder, recursive=True))
    return len(folders)
