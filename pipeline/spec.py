"""The job file: one strict pydantic model (`JobSpec`) loaded from YAML.

In: a YAML file (or dict). Out: a validated `JobSpec`, or a `JobSpecError` whose message names every bad
key by its dotted path, says what is allowed, and suggests the closest key for a typo.

Each stage's options live in the stage's own file (stages/*.py); `JobSpec` composes them under the
stage's name, from `STAGES`, the pipeline's stages in order. Adding a stage is one file in `stages/`
and one entry in `STAGES`: its job-file section and its Ray Data operator (pipeline/graph.py) follow.
"""
from __future__ import annotations

import difflib
import inspect
import re
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, create_model, field_validator, model_validator

from pipeline.settings import job_defaults
from stages.common.storage import SECRET_OPTIONS
from stages.common.strict import Strict
from stages.common.variant import FIELDS
from stages.contract import StageOptions
from stages.media.conditioning import ConditioningSpec
from stages.models.devices import auto_dtype
from stages.models.families import family_for
from stages.models.gpus import GPU_TABLE
from stages.models.spec import ModelSpec
from stages.decode import DecodeStage
from stages.encode import EncodeStage
from stages.expand import ExpandStage
from stages.filter import FilterStage
from stages.sample import SampleStage
from stages.write import WriteStage

# The stages that run on Ray, in pipeline order. Each one's options are the job-file section of its `name`.
# `expand` is on Ray only with `mode: llm`; the template runs in the driver while planning (stages/expand.py).
STAGES = [ExpandStage, SampleStage, DecodeStage, FilterStage, EncodeStage, WriteStage]


class JobSpecError(ValueError):
    """The job file cannot be used; the message lists each problem with its key path."""


def sampling_spec() -> type[Strict]:
    """The job file's `sampling:` section, made from the variant fields that are job-file keys
    (stages/common/variant.py): each with its default, the bounds a manifest column of the same name has, and its
    description. A setting left unset (None) takes the model family's recommendation for the model
    (`JobBase.sampling_defaults`; the builtin tiny models: 96x160, 17 frames at 8 fps, 4 steps, guidance 5), and
    each record says what was used."""
    kinds = {"int": int, "float": float, "string": str}
    fields = {}
    for f in FIELDS:
        if f.job is None:
            continue
        default, doc = f.job[0], (f.job[1:] or [None])[0]
        kind = kinds[f.override] | None if default is None else kinds[f.override]
        low, high = f.bounds or (None, None)
        fields[f.name] = (kind, Field(default, ge=low, le=high, description=doc))
    return create_model("SamplingSpec", __base__=Strict, __doc__="Defaults for every row; a manifest column of "
                        "the same name overrides them per row.", **fields)


SamplingSpec = sampling_spec()


_RATIO = re.compile(r"^\s*([1-9]\d{0,2})\s*:\s*([1-9]\d{0,2})\s*$")


class VariantMatrix(Strict):
    """Each manifest row becomes the cross product of these: one variant per cell (style x aspect ratio x
    seed), each record naming its cell. Heights and widths come from the aspect ratio at the pixel budget
    `sampling.height` x `sampling.width`, on the family's size grid."""

    styles: list[str] = Field(default_factory=list, description="styles of the cells; empty = the row's own")
    aspect_ratios: list[str] = Field(default_factory=list, description='e.g. ["16:9", "9:16", "1:1"]; empty = '
                                                                       "the row's own height and width")
    seeds: int = Field(1, ge=1, le=64, description="seeds per (style, aspect ratio): base seed + 0..seeds-1")

    @field_validator("aspect_ratios")
    @classmethod
    def _ratios(cls, v: list[str]) -> list[str]:
        bad = [r for r in v if not _RATIO.match(r)]
        if bad:
            raise ValueError(f"{', '.join(map(repr, bad))}: an aspect ratio is 'W:H' with whole numbers, e.g. '16:9'")
        if len(set(v)) < len(v):
            raise ValueError("an aspect ratio is listed twice")
        return [r.replace(" ", "") for r in v]

    @field_validator("styles")
    @classmethod
    def _styles(cls, v: list[str]) -> list[str]:
        if any(not s.strip() for s in v) or len(set(v)) < len(v):
            raise ValueError("styles must be non-empty and different")
        return v

    @model_validator(mode="after")
    def _size(self) -> "VariantMatrix":
        cells = max(1, len(self.styles)) * max(1, len(self.aspect_ratios)) * self.seeds
        if cells > 256:
            raise ValueError(f"{cells} variants per row; at most 256")
        return self

    def cells(self, sizes: dict[str, tuple[int, int]]) -> list[dict]:
        """Every cell, in a fixed order: {style, aspect_ratio, seed_index, height, width} (None = the row's)."""
        out = []
        for style in self.styles or [None]:
            for ratio in self.aspect_ratios or [None]:
                h, w = sizes[ratio] if ratio else (None, None)
                for seed_index in range(self.seeds):
                    out.append({"style": style, "aspect_ratio": ratio, "seed_index": seed_index,
                                "height": h, "width": w})
        return out


def size_for(ratio: str, budget: int, multiple: int) -> tuple[int, int]:
    """(height, width) of aspect `ratio` ('W:H') holding about `budget` pixels, each a multiple of `multiple`."""
    a, b = (int(x) for x in _RATIO.match(ratio).groups())
    width = (budget * a / b) ** 0.5
    snap = lambda x: max(multiple, int(round(x / multiple)) * multiple)  # noqa: E731
    return snap(budget / width), snap(width)


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
    stall_timeout_s: float = Field(
        900.0, gt=0, description="stop (exit 1, saying why) when no record is committed and no stage shows a "
                                 "sign of life for this long; working stages send heartbeats, so a slow model "
                                 "never trips it")
    batch_timeout_s: float | None = Field(
        None, gt=0, description="end a worker whose stage batch runs longer than this (a hang inside a live "
                                "worker); Ray restarts it and the rows are charged as for a crash, so a row "
                                "that always hangs is recorded failed after ray.max_row_attempts. null: no limit. "
                                "Set it to several times your slowest batch")
    max_rows_per_dataset: int = Field(
        25_000, ge=1, description="variants per Ray Data dataset: a longer run goes in waves of this many, "
                                   "because the driver's Ray Data bookkeeping grows with one dataset's blocks; "
                                   "the model actors restart (and reload) between waves")


class BudgetSpec(Strict):
    """A bound on what a job may spend. A job whose plan exceeds it is refused before any work; a run that spends
    it starts no new variant, commits what finished, and exits 1 (a re-run with a larger budget resumes)."""

    max_gpu_hours: float | None = Field(None, gt=0, description="GPU-hours the job may use (busy time of each GPU "
                                                                  "stage times its share of a GPU); null: no bound")
    gpu: str = Field("h100-80gb", description="the GPU the plan assumes when the cluster's cannot be read")
    mfu: float = Field(0.35, gt=0, le=1, description="the model FLOPs utilization the plan assumes")

    @field_validator("gpu")
    @classmethod
    def _known_gpu(cls, v: str) -> str:
        if v not in GPU_TABLE:
            raise ValueError(f"unknown GPU (known: {', '.join(sorted(GPU_TABLE))})")
        return v


_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class JobBase(Strict):
    """The job's own keys; `JobSpec` adds one section per stage."""

    name: str = Field("rushes-job", min_length=1, description="the job's name (default: the job file's name); in the metrics and the report")
    manifest: str = Field(..., min_length=1, description="Parquet file, folder or glob; local or any fsspec URI")
    output: str = Field(..., min_length=1, description="library root; local folder or fsspec URI")
    run_id: str | None = Field(None, description="this run's id (default: a UTC timestamp and a random suffix); part of object keys")
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="fsspec options for manifest, output and weights in object storage (endpoint_url, region...)")
    lease_ttl_s: float = Field(120.0, ge=5, description="a dead run's lease expires after this long")
    model: ModelSpec = Field(default_factory=ModelSpec, description="the model: its family, weights, dtype and LoRAs")
    sampling: SamplingSpec = Field(default_factory=SamplingSpec, description="every row's sampling settings, unless its manifest columns say otherwise")
    variants: VariantMatrix | None = Field(None, description="a variant matrix: styles x aspect ratios x seeds")
    order: Literal["longest_first", "manifest"] = Field(
        "longest_first", description="the order variants start in: longest_first (by their denoising work, so "
                                     "that long videos never start last and leave one GPU working alone) or manifest; "
                                     "never changes a variant's params_hash, seed or resume")
    budget: BudgetSpec = Field(default_factory=BudgetSpec, description="a bound on the GPU-hours a job may spend")
    conditioning: ConditioningSpec = Field(default_factory=ConditioningSpec, description=(
        "rows with an image, last_image or video column: how the input meets each variant's size, and how "
        "strongly it holds"))
    commit: CommitSpec = Field(default_factory=CommitSpec, description="how finished variants' records are committed")
    ray: RaySpec = Field(default_factory=RaySpec, description="where the job runs on Ray, and the bounds on failures and waits")

    @field_validator("run_id")
    @classmethod
    def _run_id_is_a_key(cls, v: str | None) -> str | None:
        if v is not None and not _RUN_ID.match(v):
            raise ValueError("must match [A-Za-z0-9][A-Za-z0-9._-]{0,127} (it becomes part of object keys)")
        return v

    @field_validator("storage_options")
    @classmethod
    def _no_secrets(cls, v: dict[str, Any]) -> dict[str, Any]:
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
    def _resolve_auto(self) -> "JobBase":
        """`auto` settings decided from the job file alone, so a re-run plans the same params_hash: the model's
        dtype from where the stages that run it ask to run, then each stage's own (decode's VAE tiling)."""
        if self.model.dtype == "auto":
            on_gpu = any(o.resources.wants_gpu for o in self.stage_options().values() if o.loads_model)
            object.__setattr__(self.model, "dtype", auto_dtype(self.model.path, on_gpu))
        for name, options in self.stage_options().items():
            options = options.resolved(self.model.path, self.family)
            options._storage_options = self.storage_options
            object.__setattr__(self, name, options)
        return self

    @model_validator(mode="after")
    def _sampling_fits_the_model(self) -> "JobBase":
        if self.sampling.duration_s is not None and self.sampling.num_frames is not None:
            raise ValueError("sampling: give num_frames or duration_s, not both")
        problem = self.family.check_row(self.sampling_defaults(), self.model.path)
        if problem:
            raise ValueError(f"sampling: {problem}")
        if self.conditioning.strength is not None and not self.family.conditioning_strength:
            raise ValueError(f"conditioning.strength: family '{self.family.name}' has no conditioning strength "
                             "(ltx has: LTXConditionPipeline's strength)")
        for name, options in self.stage_options().items():  # a stage option this model cannot run
            problem = options.check_model(self.model, self.family)
            if problem:
                raise ValueError(f"{name}: {problem}")
        return self

    @property
    def family(self):
        return family_for(self.model.family)

    def sampling_defaults(self) -> dict:
        """`sampling` with every unset setting resolved: the family's recommendation for this model."""
        return job_defaults(self.sampling.model_dump(), self.family, self.model.path)

    def matrix_sizes(self) -> dict[str, tuple[int, int]]:
        """(height, width) of each aspect ratio of the variant matrix, at the sampling pixel budget."""
        if not self.variants or not self.variants.aspect_ratios:
            return {}
        d = self.sampling_defaults()
        multiple = self.family.spatial_multiple_of(self.model.path)
        return {r: size_for(r, d["height"] * d["width"], multiple) for r in self.variants.aspect_ratios}

    def stage_options(self) -> dict:
        """{stage name: its options}, in pipeline order."""
        return {name: getattr(self, name) for name, field in type(self).model_fields.items()
                if isinstance(field.annotation, type) and issubclass(field.annotation, StageOptions)}

    def resolved(self) -> "JobSpec":
        """A copy with a run id filled in, as saved beside the outputs."""
        if self.run_id:
            return self.model_copy()
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        return self.model_copy(update={"run_id": f"{stamp}-{uuid.uuid4().hex[:6]}"})


def summary(stage) -> str:
    """The first line of a stage module's docstring: what the stage does."""
    return (inspect.getmodule(stage).__doc__ or stage.name).strip().splitlines()[0].rstrip(".")


def job_spec_for(stages: list) -> type[JobBase]:
    """A job-file model with one section per stage, named after it, in pipeline order. Its `stages` are the
    pipeline a job of it runs (pipeline/plan.py, pipeline/graph.py)."""
    model = create_model(
        "JobSpec", __base__=JobBase, __doc__="A whole job file: its own keys and one section per stage.",
        **{stage.name: (stage.Options, Field(default_factory=stage.Options, description=summary(stage)))
           for stage in stages})
    model.stages = tuple(stages)
    return model


JobSpec = job_spec_for(STAGES)


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
