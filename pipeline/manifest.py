"""Manifest reading and validation.

In: a Parquet file, a folder of Parquet files, or a glob, on any fsspec filesystem. Out: valid rows with
every sampling parameter resolved against the job's defaults, and invalid rows with an `error` that
names the column and the problem. A file that is not a manifest at all (unreadable, no `id` or `prompt`
column, an override column of the wrong type) is refused with a `ManifestError` before any work.
"""
from __future__ import annotations

import hashlib
import math
import random
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pyarrow.types as pat

from pipeline.inputs import InputCheck
from pipeline.library import digest16
from pipeline.settings import resolve_settings
from pipeline.spec import JobSpec
from stages.common.storage import StorageError, filesystem, is_local, is_transient, with_retries
from stages.common.variant import BOUNDS, OVERRIDES


class ManifestError(ValueError):
    """The manifest as a whole cannot be used."""


ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
REQUIRED = {"id": "string", "prompt": "string"}


def _type_ok(t: pa.DataType, kind: str) -> bool:
    if pat.is_null(t):
        return True
    if kind in ("string", "uri"):  # uri: a conditioning input's path or fsspec URI
        return pat.is_string(t) or pat.is_large_string(t)
    if kind == "int":  # float columns come from pandas ints with missing values; values are checked per row
        return pat.is_integer(t) or pat.is_floating(t)
    if kind == "float":
        return pat.is_integer(t) or pat.is_floating(t)
    if kind == "list<string>":
        return (pat.is_list(t) or pat.is_large_list(t)) and (
            pat.is_string(t.value_type) or pat.is_large_string(t.value_type) or pat.is_null(t.value_type))
    if kind == "shots":  # a storyboard: list<struct<prompt: string, duration_s: float>>
        if not (pat.is_list(t) or pat.is_large_list(t)) or not pat.is_struct(t.value_type):
            return False
        fields = {f.name: f.type for f in t.value_type}
        return set(fields) == {"prompt", "duration_s"} and _type_ok(fields["prompt"], "string") and _type_ok(
            fields["duration_s"], "float")
    raise AssertionError(kind)


def manifest_files(uri: str, storage_options: dict | None = None) -> tuple:
    fs, path = filesystem(uri, storage_options)
    if any(c in path for c in "*?["):
        files = sorted(with_retries("list", uri, lambda: fs.glob(path)))
    elif with_retries("read", uri, lambda: fs.isdir(path)):
        files = sorted(f for f in with_retries("list", uri, lambda: fs.find(path)) if f.endswith(".parquet")
                       and not any(part.startswith((".", "_")) for part in f[len(path):].split("/")))
    elif with_retries("read", uri, lambda: fs.exists(path)):
        files = [path]
    else:
        raise ManifestError(f"manifest {uri}: not found")
    if not files:
        raise ManifestError(f"manifest {uri}: no Parquet files there")
    return fs, files


def manifest_folder(fs, uri: str, files: list[str]) -> str:
    """The folder a manifest's relative paths start from: a file's own folder, a folder itself, or the folder
    before a glob's first wildcard; as a plain path locally, else as a URI."""
    path = fs._strip_protocol(uri)
    if any(c in path for c in "*?["):
        folder = path[:min(path.index(c) for c in "*?[" if c in path)].rpartition("/")[0]
    elif len(files) == 1 and files[0] == path:
        folder = path.rpartition("/")[0]
    else:
        folder = path
    return folder if is_local(fs) else fs.unstrip_protocol(folder)


class Manifest:
    """A manifest's files, read as a stream of small tables: nobody holds the whole manifest.

    Opening checks every file's footer (readable, required columns present, override columns of the
    right kind); `batches()` then yields the rows in file order, `batch_size` at a time, each batch with
    every column of the manifest (a column missing from one file reads as nulls there).
    """

    def __init__(self, uri: str, storage_options: dict | None = None):
        self.uri = uri
        self.fs, self.files = manifest_files(uri, storage_options)
        self.base = manifest_folder(self.fs, uri, self.files)
        schemas, self.file_rows = [], []
        for f in self.files:
            meta = self._footer(f)
            schemas.append(meta.schema.to_arrow_schema())
            self.file_rows.append(meta.num_rows)
        self.num_rows = sum(self.file_rows)
        problems = []
        for f, schema in zip(self.files, schemas):
            where = f" in {self.fs.unstrip_protocol(f)}" if len(self.files) > 1 else ""
            problems += [f"missing required column '{c}'{where}" for c in REQUIRED if c not in schema.names]
            for name, kind in {**REQUIRED, **OVERRIDES}.items():
                if name in schema.names and not _type_ok(schema.field(name).type, kind):
                    problems.append(f"column '{name}'{where} has type {schema.field(name).type}, expected {kind}")
        if problems:
            columns = list(dict.fromkeys(n for s in schemas for n in s.names))
            raise ManifestError(f"manifest {uri}: " + "; ".join(problems) + f" (columns: {', '.join(columns)})")
        known = set(REQUIRED) | set(OVERRIDES)
        try:
            merged = pa.unify_schemas(schemas, promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise ManifestError(f"manifest {uri}: its files disagree on a column's type: {e}") from None
        self.schema = merged
        self.columns = merged.names
        self.extra_schema = pa.schema([merged.field(c) for c in merged.names if c not in known])

    def _footer(self, path: str):
        uri = self.fs.unstrip_protocol(path)

        def read():
            with self.fs.open(path, "rb") as fh:
                return pq.ParquetFile(fh).metadata
        try:
            return with_retries("read", uri, read)
        except StorageError as e:
            if isinstance(e.__cause__, pa.ArrowInvalid):
                raise ManifestError(f"manifest {uri}: not readable as Parquet: {e.__cause__}") from None
            raise

    def batches(self, columns: list[str] | None = None, batch_size: int = 2048) -> Iterator[pa.Table]:
        """Tables of at most `batch_size` rows, in manifest order (files sorted by name)."""
        columns = list(columns or self.columns)
        for f in self.files:
            yield from self._file_batches(f, columns, batch_size)

    def _file_batches(self, path: str, columns: list[str], batch_size: int) -> Iterator[pa.Table]:
        """One file's rows; a transient storage error mid-file reopens it and skips the rows already given."""
        uri = self.fs.unstrip_protocol(path)
        given = 0
        for attempt in range(6):
            try:
                with self.fs.open(path, "rb") as fh:
                    pf = pq.ParquetFile(fh)
                    present = [c for c in columns if c in pf.schema_arrow.names]
                    seen = 0
                    for batch in pf.iter_batches(batch_size=batch_size, columns=present):
                        if seen + batch.num_rows <= given:
                            seen += batch.num_rows
                            continue
                        table = pa.Table.from_batches([batch]).slice(max(0, given - seen))
                        seen += batch.num_rows
                        for c in columns:
                            if c not in present:
                                table = table.append_column(c, pa.nulls(table.num_rows, self.schema.field(c).type))
                        given += table.num_rows
                        yield table.select(columns).cast(pa.schema([self.schema.field(c) for c in columns]))
                return
            except pa.ArrowInvalid as e:
                raise ManifestError(f"manifest {uri}: not readable as Parquet: {e}") from None
            except OSError as e:
                if not is_transient(e) or attempt == 5:
                    raise StorageError(f"read manifest {uri} failed: {type(e).__name__}: {e}") from e
                time.sleep(random.uniform(0, 0.25 * 2**attempt))


@dataclass
class Validated:
    valid: list[dict] = field(default_factory=list)
    invalid: list[dict] = field(default_factory=list)


def _derived_seed(row_id: str, base: int) -> int:
    """A seed for rows that give none: stable for the id, so appending rows never reshuffles seeds."""
    return (base + int.from_bytes(hashlib.sha256(row_id.encode()).digest()[:4], "big")) % 2**31


def _check_shots(value: list) -> tuple[object, str | None]:
    if not value:
        return None, "shots: a storyboard needs at least one shot"
    for i, shot in enumerate(value):
        prompt, duration = shot.get("prompt"), shot.get("duration_s")
        if not isinstance(prompt, str) or not prompt.strip():
            return None, f"shots[{i}].prompt: empty"
        if not isinstance(duration, (int, float)) or not math.isfinite(duration) or not 0 < duration <= 3600:
            return None, f"shots[{i}].duration_s: must be a number of seconds above 0, got {duration!r}"
    return [{"prompt": s["prompt"], "duration_s": float(s["duration_s"])} for s in value], None


def _check_value(name: str, value, kind: str) -> tuple[object, str | None]:
    if kind == "shots":
        return _check_shots(value)
    if kind == "int":
        if isinstance(value, float):
            if not math.isfinite(value) or value != int(value):
                return None, f"{name}: must be a whole number, got {value!r}"
            value = int(value)
    if kind == "float" and not math.isfinite(value):
        return None, f"{name}: must be a finite number, got {value!r}"
    if name in BOUNDS:
        lo, hi = BOUNDS[name]
        if not lo <= value <= hi:
            return None, f"{name}: must be between {lo} and {hi}, got {value!r}"
    if kind == "uri" and not value.strip():
        return None, f"{name}: an empty path; leave the column null for a row without one"
    if kind == "list<string>" and any(not isinstance(t, str) for t in value):
        return None, f"{name}: must be a list of strings, got {value!r}"
    return value, None


def duplicate_ids(ids: Iterator[list]) -> dict[int, int]:
    """{row: first row with the same id} for every repeat of a well-formed id, from the `id` column given in
    order as lists. Holds 16 bytes per row (a digest), not the ids themselves."""
    digests, rows, start = [], [], 0
    for chunk in ids:
        good = [(i, v) for i, v in enumerate(chunk) if isinstance(v, str) and ID_PATTERN.fullmatch(v)]
        digests.append(np.array([digest16(v) for _, v in good], dtype="S16"))
        rows.append(np.array([start + i for i, _ in good], dtype=np.int64))
        start += len(chunk)
    if not digests:
        return {}
    d, r = np.concatenate(digests), np.concatenate(rows)
    order = np.argsort(d, kind="stable")  # equal digests stay in row order
    d, r = d[order], r[order]
    repeat = np.flatnonzero(d[1:] == d[:-1]) + 1  # positions whose digest equals the one before
    if not len(repeat):
        return {}
    # The first row of each run of equal digests.
    run_start = np.maximum.accumulate(np.where(np.r_[True, d[1:] != d[:-1]], np.arange(len(d)), 0))
    return {int(r[i]): int(r[run_start[i]]) for i in repeat}


class RowValidator:
    """Checks manifest rows one at a time and resolves their parameters against the job's defaults.

    `duplicate_of`: {row: first row with that id}, from `duplicate_ids` over the whole manifest; `base`: the
    manifest's folder, which a conditioning input's relative path starts from (pipeline/inputs.py)."""

    def __init__(self, spec: JobSpec, columns: list[str], duplicate_of: dict[int, int], base: str = ""):
        self.family = spec.family
        self.inputs = InputCheck(spec, base)  # conditioning images and clips, read from `base` when relative
        self.model_path = spec.model.path
        self.defaults = spec.sampling_defaults()  # the family's recommendations where the job file is silent
        self.stage_options = list(spec.stage_options().values())  # what a stage cannot make is invalid too
        known = set(REQUIRED) | set(OVERRIDES)
        self.extra_cols = [c for c in columns if c not in known]
        self.duplicate_of = duplicate_of
        # columns that the job's variant matrix sets, which a row must then leave alone
        m = spec.variants
        self.set_by_matrix = {} if m is None else {
            **{"num_variants": "the variants"},
            **({"height": "the sizes", "width": "the sizes"} if m.aspect_ratios else {}),
            **({"style": "the styles"} if m.styles else {})}

    def validate(self, table: pa.Table, first_row: int) -> Validated:
        """The rows of `table`, which starts at manifest row `first_row`."""
        out = Validated()
        for offset, raw in enumerate(table.to_pylist()):
            row, invalid = self.check(raw, first_row + offset)
            (out.valid if row is not None else out.invalid).append(row if row is not None else invalid)
        return out

    def check(self, raw: dict, index: int) -> tuple[dict | None, dict | None]:
        """(valid row, None) or (None, invalid row with `error`)."""
        errors = []
        row_id, prompt = raw.get("id"), raw.get("prompt")
        if not isinstance(row_id, str) or not row_id:
            errors.append("id: missing")
        elif not ID_PATTERN.fullmatch(row_id):
            errors.append(f"id: {row_id!r} must match [A-Za-z0-9][A-Za-z0-9._-]{{0,127}} "
                          "(no slashes, spaces or leading dot)")
        elif index in self.duplicate_of:
            errors.append(f"id: {row_id!r} duplicates row {self.duplicate_of[index]}")
        if not isinstance(prompt, str) or not prompt.strip():
            errors.append("prompt: empty")
        row = {"row": index, "id": row_id, "prompt": prompt,
               "extra": {c: raw.get(c) for c in self.extra_cols}}
        for name, kind in OVERRIDES.items():
            value = raw.get(name)
            if value is None:
                continue
            if name in self.set_by_matrix:
                errors.append(f"{name}: the job's variants matrix sets {self.set_by_matrix[name]}; leave this "
                              "column empty or remove the matrix")
                continue
            value, problem = _check_value(name, value, kind)
            if problem:
                errors.append(problem)
            else:
                row[name] = value
        if not errors and "duration_s" in row and "num_frames" in row:
            errors.append("duration_s: give num_frames or duration_s, not both")
        if not errors and row.get("shots") and ("duration_s" in row or "num_frames" in row):
            errors.append("shots: the shots' durations make the length; leave num_frames and duration_s empty")
        if not errors:
            given = {k: row.pop(k) for k in list(row) if k in OVERRIDES}
            settings = resolve_settings(given, self.defaults, self.family)
            # the job's default for each one the row leaves unset; the seed is derived, below
            row.update({k: v for k, v in settings.items() if k in OVERRIDES and k not in ("seed", "duration_s")})
            row.setdefault("style", None)
            row.setdefault("tags", [])
            row["seed"] = given.get("seed", _derived_seed(row_id, self.defaults["seed"]))
            problem = self.inputs.check(row) or self.family.check_row(row, self.model_path) or next(
                filter(None, (o.check_row(row) for o in self.stage_options)), None)
            if problem:
                errors.append(problem)
        if errors:
            return None, {"row": index, "id": row_id if isinstance(row_id, str) else None,
                          "prompt": prompt if isinstance(prompt, str) else None,
                          "error": "; ".join(errors), "extra": row["extra"]}
        return row, None
