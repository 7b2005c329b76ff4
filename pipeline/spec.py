"""The job file: one strict pydantic model (`JobSpec`) loaded from YAML.

In: a YAML file (or dict). Out: a validated `JobSpec`, or a `JobSpecError` whose message names every bad
key by its dotted path, says what is allowed, and suggests the closest key for a typo.
"""
from __future__ import annotations

import difflib
import re
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class JobSpecError(ValueError):
    """The job file cannot be used; the message lists each problem with its key path."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


_REPLICAS = re.compile(r"^\s*(\d+)\s*\.\.\s*(\d+)\s*$")


class Resources(Strict):
    """What one replica of a stage asks Ray for, and how many replicas run."""

    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0, description="GPUs per replica; fractions share a GPU")
    memory_gb: float | None = Field(None, gt=0, description="memory reserved per replica, in GiB")
    replicas: int | str = Field(1, description="actor pool size: a number, or 'min..max' for Ray Data to scale")

    @field_validator("replicas")
    @classmethod
    def _replicas(cls, v: int | str) -> int | str:
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v)
        if isinstance(v, int):
            if v < 1:
                raise ValueError("must be at least 1")
            return v
        m = _REPLICAS.match(v)
        if not m:
            raise ValueError("must be a number or a range 'min..max', e.g. '1..8'")
        lo, hi = int(m.group(1)), int(m.group(2))
        if not 1 <= lo <= hi:
            raise ValueError(f"range {v!r} needs 1 <= min <= max")
        return f"{lo}..{hi}"

    @property
    def replica_range(self) -> tuple[int, int]:
        if isinstance(self.replicas, int):
            return self.replicas, self.replicas
        lo, hi = self.replicas.split("..")
        return int(lo), int(hi)


class ModelSpec(Strict):
    family: str = Field("wan", description="built-in family (wan) or 'package.module:ClassName'")
    path: str = Field("builtin:tiny-wan", description="builtin:tiny-wan, a local folder, or a hub id")
    revision: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"

    @field_validator("family")
    @classmethod
    def _family_exists(cls, v: str) -> str:
        from stages.families import family_for

        family_for(v)
        return v


class SamplingSpec(Strict):
    """Defaults for every row; a manifest column of the same name overrides them per row."""

    height: int = Field(96, gt=0)
    width: int = Field(160, gt=0)
    num_frames: int = Field(17, gt=0)
    fps: int = Field(8, gt=0, le=120)
    num_inference_steps: int = Field(4, gt=0, le=1000)
    guidance_scale: float = Field(5.0, ge=0)
    negative_prompt: str = ""
    seed: int = Field(0, ge=0, description="base seed for rows that give none")
    num_variants: int = Field(1, ge=1, le=64)


class ExpandSpec(Strict):
    mode: Literal["template", "none"] = "template"
    styles: list[str] = Field(default_factory=list, description="styles to draw from; empty = built-in list")


class SampleSpec(Strict):
    batch_size: int = Field(4, ge=1, description="variants per pipeline call (same shape only)")
    batch_invariant: bool = Field(
        True, description="denoise each variant in its own forward so batching never changes pixels")
    resources: Resources = Field(default_factory=lambda: Resources(num_gpus=1.0))


class DecodeSpec(Strict):
    batch_size: int = Field(1, ge=1)
    resources: Resources = Field(default_factory=lambda: Resources(num_gpus=1.0))


class FilterSpec(Strict):
    black_luma: float = Field(8.0, ge=0, le=255, description="a frame darker than this mean luma is black")
    max_black_fraction: float = Field(0.5, ge=0, le=1)
    min_motion: float = Field(0.5, ge=0, description="mean abs frame difference below this = frozen")
    min_brightness: float = Field(16.0, ge=0, le=255)
    max_brightness: float = Field(240.0, ge=0, le=255)
    min_sharpness: float = Field(0.0, ge=0, description="variance of the Laplacian; 0 disables")


class EncodeSpec(Strict):
    codec: Literal["h264"] = "h264"
    crf: int = Field(20, ge=0, le=51)
    preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower",
                    "veryslow"] = "medium"
    poster_quality: int = Field(90, ge=1, le=95)
    keep_rejected: bool = Field(False, description="also write videos that the filter rejected")
    batch_size: int = Field(1, ge=1)


class RaySpec(Strict):
    address: str | None = Field(None, description="Ray address; unset = a local Ray started by the job")
    num_cpus: int | None = Field(None, ge=1, description="logical CPUs of a local Ray")
    max_row_attempts: int = Field(
        3, ge=1, le=20, description="times a row may take down its worker before it is recorded as failed")
    setup_attempts: int = Field(3, ge=1, le=20, description="tries of a stage's setup (model load) per actor")
    resource_wait_s: float = Field(
        300.0, ge=0, description="how long to wait for a node that can host each stage before failing")


_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class JobSpec(Strict):
    name: str = Field("rushes-job", min_length=1)
    manifest: str = Field(..., min_length=1, description="Parquet file, folder or glob; local or any fsspec URI")
    output: str = Field(..., min_length=1, description="library root; local folder or fsspec URI")
    run_id: str | None = None
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec options for manifest and output (endpoint_url, region...)")
    lease_ttl_s: float = Field(120.0, ge=5, description="a dead run's lease expires after this long")
    model: ModelSpec = Field(default_factory=ModelSpec)
    sampling: SamplingSpec = Field(default_factory=SamplingSpec)
    expand: ExpandSpec = Field(default_factory=ExpandSpec)
    sample: SampleSpec = Field(default_factory=SampleSpec)
    decode: DecodeSpec = Field(default_factory=DecodeSpec)
    filter: FilterSpec = Field(default_factory=FilterSpec)
    encode: EncodeSpec = Field(default_factory=EncodeSpec)
    ray: RaySpec = Field(default_factory=RaySpec)

    @field_validator("run_id")
    @classmethod
    def _run_id_is_a_key(cls, v: str | None) -> str | None:
        if v is not None and not _RUN_ID.match(v):
            raise ValueError("must match [A-Za-z0-9][A-Za-z0-9._-]{0,127} (it becomes part of object keys)")
        return v

    @field_validator("storage_options")
    @classmethod
    def _no_secrets(cls, v: dict[str, Any]) -> dict[str, Any]:
        from pipeline.storage import SECRET_OPTIONS

        def keys(d: dict, prefix: str = ""):
            for k, val in d.items():
                yield f"{prefix}{k}", k
                if isinstance(val, dict):
                    yield from keys(val, f"{prefix}{k}.")

        secret = [path for path, k in keys(v) if str(k).lower() in SECRET_OPTIONS]
        if secret:
            raise ValueError(f"{', '.join(secret)}: credentials do not belong in a job file (it is saved beside "
                             "the outputs); use the environment (AWS_ACCESS_KEY_ID, ...) or a profile")
        return v

    @model_validator(mode="after")
    def _sampling_fits_the_model(self) -> "JobSpec":
        from stages.families import family_for

        problem = family_for(self.model.family).check_shape(
            self.sampling.height, self.sampling.width, self.sampling.num_frames)
        if problem:
            raise ValueError(f"sampling: {problem}")
        return self

    def resolved(self) -> "JobSpec":
        """A copy with a run id filled in, as saved beside the outputs."""
        if self.run_id:
            return self.model_copy()
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        return self.model_copy(update={"run_id": f"{stamp}-{uuid.uuid4().hex[:6]}"})


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that owns the key at `loc` (walks nested fields)."""
    model: type[BaseModel] = JobSpec
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def format_errors(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid job file"]
    for e in err.errors():
        loc = tuple(p for p in e["loc"])
        path = ".".join(str(p) for p in loc) or "(top level)"
        if e["type"] == "extra_forbidden":
            owner = _model_at(loc)
            allowed = sorted(owner.model_fields) if owner else []
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            lines.append(f"  {path}: unknown key{hint} (allowed: {', '.join(allowed)})")
        elif e["type"] == "literal_error":
            lines.append(f"  {path}: {e['msg']}, got {e.get('input')!r}")
        elif e["type"] == "missing":
            lines.append(f"  {path}: required key is missing")
        elif loc and loc[0] == "storage_options":  # may hold a secret: never echo the value
            lines.append(f"  {path}: {e['msg'].removeprefix('Value error, ')}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"  {path}: {msg} (got {e.get('input')!r})")
    return "\n".join(lines)


def load_job(source: str | Path | dict[str, Any], **overrides: Any) -> JobSpec:
    """Load and validate a job file. `overrides` (manifest=, output=) replace top-level keys."""
    if isinstance(source, dict):
        data, name = dict(source), "job"
    else:
        path = Path(source)
        try:
            data = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise JobSpecError(f"{path}: job file not found") from None
        except yaml.YAMLError as e:
            raise JobSpecError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise JobSpecError(f"{path}: a job file is a YAML mapping, got {type(data).__name__}")
        name = str(path)
        data.setdefault("name", path.stem)
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return JobSpec.model_validate(data)
    except ValidationError as e:
        raise JobSpecError(format_errors(e, name)) from None
