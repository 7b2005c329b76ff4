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
    """Quality thresholds (stages/filter.py). Every metric is recorded on every record; a threshold of
    `null`, or a metric named in `score_only`, records it without ever rejecting. Luma is 0..255."""

    black_luma: float = Field(8.0, ge=0, le=255, description="a frame darker than this mean luma is black")
    max_black_fraction: float | None = Field(0.5, ge=0, le=1, description="share of black frames")
    max_constant_fraction: float | None = Field(0.5, ge=0, le=1, description="share of one-colour frames")
    min_motion: float | None = Field(
        0.2, ge=0, description="fastest 1% of the flow, % of frame width per frame; below = frozen")
    max_motion: float | None = Field(None, gt=0, description="optical flow above this = chaotic")
    max_flow_residual: float | None = Field(
        20.0, gt=0, description="luma change the flow cannot explain; above = chaotic")
    max_flicker: float | None = Field(15.0, gt=0, description="mean unexplained brightness jump, luma levels")
    max_scene_cuts: int | None = Field(0, ge=0, description="hard cuts allowed in one clip")
    min_sharpness: float | None = Field(None, ge=0, description="variance of the Laplacian")
    min_brightness: float | None = Field(16.0, ge=0, le=255, description="mean luma")
    max_brightness: float | None = Field(240.0, ge=0, le=255, description="mean luma")
    max_clipped_low: float | None = Field(0.5, ge=0, le=1, description="share of pixels at luma <= 5")
    max_clipped_high: float | None = Field(0.25, ge=0, le=1, description="share of pixels at luma >= 250")
    min_contrast: float | None = Field(4.0, ge=0, description="mean per-frame luma standard deviation")
    clip_model: str | None = Field(
        None, description="CLIP for prompt alignment: builtin:tiny-clip, a local folder or a hub id; null = off")
    min_clip_score: float | None = Field(None, ge=0, le=100, description="100 x cosine(text, frame), mean")
    max_duplicate_distance: int | None = Field(
        24, ge=0, le=256, description="pHash Hamming bits within which two videos are duplicates; null = off")
    retries_on_reject: int = Field(0, ge=0, le=10, description="new seeds to try for a rejected variant")
    score_only: list[str] = Field(default_factory=list, description="metrics recorded but never rejecting")
    resources: Resources = Field(default_factory=Resources,
                                 description="per filter actor; used when clip_model makes the filter an actor pool")

    @field_validator("score_only")
    @classmethod
    def _known_metrics(cls, v: list[str]) -> list[str]:
        from stages.filter import SCORE_ONLY_NAMES

        unknown = [name for name in v if name not in SCORE_ONLY_NAMES]
        if unknown:
            raise ValueError(f"unknown metric {', '.join(map(repr, unknown))} "
                             f"(allowed: {', '.join(SCORE_ONLY_NAMES)})")
        return v

    @field_validator("clip_model")
    @classmethod
    def _known_builtin_clip(cls, v: str | None) -> str | None:
        from stages.clip_score import BUILTIN_CLIPS

        if v and v.startswith("builtin:") and v.removeprefix("builtin:") not in BUILTIN_CLIPS:
            raise ValueError(f"unknown builtin model (known: {', '.join('builtin:' + k for k in BUILTIN_CLIPS)})")
        return v

    @model_validator(mode="after")
    def _clip_threshold_needs_a_model(self) -> "FilterSpec":
        if self.min_clip_score is not None and not self.clip_model:
            raise ValueError("min_clip_score needs filter.clip_model (e.g. builtin:tiny-clip or a CLIP hub id)")
        return self


class EncodeSpec(Strict):
    """Encoder settings (stages/encode.py). `preset` is libx264's speed scale; for av1 and vp9 it maps
    onto SVT-AV1's preset and libvpx's cpu-used. An unset `crf` takes the codec's default."""

    codec: Literal["h264", "av1", "vp9"] = Field(
        "h264", description="h264 (libx264, .mp4), av1 (libsvtav1, .mp4), vp9 (libvpx-vp9, .webm)")
    crf: int = Field(
        20, ge=0, le=63, description="quality, lower is better: h264 0..51 (20), av1/vp9 0..63 (35/32)")
    preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower",
                    "veryslow"] = "medium"
    poster_quality: int = Field(90, ge=1, le=95)
    preview_width: int = Field(256, ge=16, le=1024, description="animated WebP preview width (never upscaled)")
    preview_frames: int = Field(16, ge=2, le=64, description="most frames in the preview")
    keep_rejected: bool = Field(False, description="also write videos that the filter rejected")
    batch_size: int = Field(1, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _codec_default_crf(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("crf") is None:
            data = {**data, "crf": {"h264": 20, "av1": 35, "vp9": 32}.get(data.get("codec", "h264"), 20)}
        return data

    @model_validator(mode="after")
    def _codec_is_usable(self) -> "EncodeSpec":
        from stages.encode import missing_encoder

        if self.codec == "h264" and self.crf > 51:
            raise ValueError(f"crf: h264 takes 0..51, got {self.crf}")
        problem = missing_encoder(self.codec)
        if problem:
            raise ValueError(f"codec: {problem}")
        return self


class CommitSpec(Strict):
    max_records: int = Field(
        256, ge=1, description="records per metadata object at most (one atomic PUT each)")
    max_wait_s: float = Field(
        5.0, ge=0, description="a finished variant waits at most about this long for its record to be committed "
                               "(0: commit each Ray Data block as it arrives)")


class RaySpec(Strict):
    address: str | None = Field(None, description="Ray address; unset = a local Ray started by the job")
    num_cpus: int | None = Field(None, ge=1, description="logical CPUs of a local Ray")
    max_row_attempts: int = Field(
        3, ge=1, le=20, description="times a row may take down its worker before it is recorded as failed")
    setup_attempts: int = Field(3, ge=1, le=20, description="tries of a stage's setup (model load) per actor")
    resource_wait_s: float = Field(
        300.0, ge=0, description="how long to wait for a node that can host each stage before failing")
    max_rows_per_dataset: int = Field(
        100_000, ge=1, description="variants per Ray Data dataset: a longer run goes in waves of this many, "
                                   "because the driver's Ray Data bookkeeping grows with one dataset's blocks; "
                                   "the model actors restart (and reload) between waves")


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
    commit: CommitSpec = Field(default_factory=CommitSpec)
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
