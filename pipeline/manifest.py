"""Manifest reading and validation.

In: a Parquet file, a folder of Parquet files, or a glob, on any fsspec filesystem. Out: valid rows with
every sampling parameter resolved against the job's defaults, and invalid rows with an `error` that
names the column and the problem. A file that is not a manifest at all (unreadable, no `id` or `prompt`
column, an override column of the wrong type) is refused with a `ManifestError` before any work.
"""
from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.types as pat
from pyarrow.fs import FSSpecHandler, PyFileSystem

from pipeline.spec import JobSpec
from pipeline.storage import StorageError, filesystem, with_retries
from stages.families import family_for


class ManifestError(ValueError):
    """The manifest as a whole cannot be used."""


ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# Optional per-row overrides and the kind of column each must be.
OVERRIDES = {
    "negative_prompt": "string", "seed": "int", "num_variants": "int", "height": "int", "width": "int",
    "num_frames": "int", "fps": "int", "num_inference_steps": "int", "guidance_scale": "float",
    "style": "string", "tags": "list<string>",
}
REQUIRED = {"id": "string", "prompt": "string"}
# (lower, upper) bounds, both inclusive, for numeric overrides.
BOUNDS = {"seed": (0, 2**31 - 1), "num_variants": (1, 64), "height": (16, 4096), "width": (16, 4096),
          "num_frames": (1, 1024), "fps": (1, 120), "num_inference_steps": (1, 1000),
          "guidance_scale": (0.0, 100.0)}


def _type_ok(t: pa.DataType, kind: str) -> bool:
    if pat.is_null(t):
        return True
    if kind == "string":
        return pat.is_string(t) or pat.is_large_string(t)
    if kind == "int":  # float columns come from pandas ints with missing values; values are checked per row
        return pat.is_integer(t) or pat.is_floating(t)
    if kind == "float":
        return pat.is_integer(t) or pat.is_floating(t)
    if kind == "list<string>":
        return (pat.is_list(t) or pat.is_large_list(t)) and (
            pat.is_string(t.value_type) or pat.is_large_string(t.value_type) or pat.is_null(t.value_type))
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


def read_manifest(uri: str, storage_options: dict | None = None) -> pa.Table:
    fs, files = manifest_files(uri, storage_options)
    try:
        table = pads.dataset(files, format="parquet", filesystem=PyFileSystem(FSSpecHandler(fs))).to_table()
    except pa.ArrowInvalid as e:
        raise ManifestError(f"manifest {uri}: not readable as Parquet: {e}") from None
    except OSError as e:
        raise StorageError(f"read manifest {uri} failed: {type(e).__name__}: {e}") from e
    problems = [f"missing required column '{c}'" for c in REQUIRED if c not in table.column_names]
    for name, kind in {**REQUIRED, **OVERRIDES}.items():
        if name in table.column_names and not _type_ok(table.schema.field(name).type, kind):
            problems.append(f"column '{name}' has type {table.schema.field(name).type}, expected {kind}")
    if problems:
        raise ManifestError(f"manifest {uri}: " + "; ".join(problems)
                            + f" (columns: {', '.join(table.column_names)})")
    return table


@dataclass
class Validated:
    valid: list[dict] = field(default_factory=list)
    invalid: list[dict] = field(default_factory=list)
    extra_schema: pa.Schema = field(default_factory=lambda: pa.schema([]))


def _derived_seed(row_id: str, base: int) -> int:
    """A seed for rows that give none: stable for the id, so appending rows never reshuffles seeds."""
    return (base + int.from_bytes(hashlib.sha256(row_id.encode()).digest()[:4], "big")) % 2**31


def _check_value(name: str, value, kind: str) -> tuple[object, str | None]:
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
    if kind == "list<string>" and any(not isinstance(t, str) for t in value):
        return None, f"{name}: must be a list of strings, got {value!r}"
    return value, None


def validate_rows(table: pa.Table, spec: JobSpec) -> Validated:
    family = family_for(spec.model.family)
    defaults = spec.sampling.model_dump()
    known = set(REQUIRED) | set(OVERRIDES)
    extra_cols = [c for c in table.column_names if c not in known]
    out = Validated(extra_schema=pa.schema([table.schema.field(c) for c in extra_cols]))
    first_row_of: dict[str, int] = {}
    for index, raw in enumerate(table.to_pylist()):
        errors = []
        row_id, prompt = raw.get("id"), raw.get("prompt")
        if not isinstance(row_id, str) or not row_id:
            errors.append("id: missing")
        elif not ID_PATTERN.match(row_id):
            errors.append(f"id: {row_id!r} must match [A-Za-z0-9][A-Za-z0-9._-]{{0,127}} "
                          "(no slashes, spaces or leading dot)")
        elif row_id in first_row_of:
            errors.append(f"id: {row_id!r} duplicates row {first_row_of[row_id]}")
        else:
            first_row_of[row_id] = index
        if not isinstance(prompt, str) or not prompt.strip():
            errors.append("prompt: empty")
        row = {"row": index, "id": row_id, "prompt": prompt,
               "extra": {c: raw.get(c) for c in extra_cols}}
        for name, kind in OVERRIDES.items():
            value = raw.get(name)
            if value is None:
                continue
            value, problem = _check_value(name, value, kind)
            if problem:
                errors.append(problem)
            else:
                row[name] = value
        if not errors:
            for name in ("height", "width", "num_frames", "fps", "num_inference_steps", "guidance_scale",
                         "negative_prompt", "num_variants"):
                row.setdefault(name, defaults[name])
            row.setdefault("style", None)
            row.setdefault("tags", [])
            row.setdefault("seed", _derived_seed(row_id, defaults["seed"]))
            problem = family.check_shape(row["height"], row["width"], row["num_frames"])
            if problem:
                errors.append(problem)
        if errors:
            out.invalid.append({"row": index, "id": row_id if isinstance(row_id, str) else None,
                                "prompt": prompt if isinstance(prompt, str) else None,
                                "error": "; ".join(errors), "extra": row["extra"]})
        else:
            out.valid.append(row)
    return out
