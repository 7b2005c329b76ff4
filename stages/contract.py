"""The stage contract, and the few pieces every stage shares.

A stage is a class with
- `name`: its key in the job file and its operator's name;
- `Options`: a pydantic model (a `StageOptions`) with its settings, its `batch_size` and its `resources`;
- `holds_model`: True makes it an actor pool whose `setup()` runs once per actor; False makes it tasks;
- `on_ray`: False when the job leaves it nothing to do on Ray (no operator is built for it);
- `__init__(options, ctx)`: cheap, runs in the driver; nothing is loaded here;
- `setup()`: loads what the stage needs, once per worker, in the worker;
- `__call__(rows) -> rows`: the work on one batch. A problem with one row becomes that row's `status` and
  `error`; an exception is for a broken worker, never for a bad row.

`pipeline/graph.py` turns the ordered list of stages into Ray Data operators from these declarations alone.
Nothing here, or anywhere in `stages/`, imports `pipeline/` or Ray.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any, ClassVar, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from stages.common.strict import Strict
from stages.models.spec import ModelSpec


_REPLICAS = re.compile(r"^\s*(\d+)\s*\.\.\s*(\d+)\s*$")


class Resources(Strict):
    """What one replica of a stage asks Ray for, and how many replicas run."""

    num_cpus: float = Field(1.0, ge=0, description="CPUs per replica (a model stage's torch threads too)")
    num_gpus: float | Literal["auto"] = Field(
        0.0, description="GPUs per replica; fractions share a GPU. auto: one per replica when the cluster has a GPU "
                         "for each model stage, else an equal share (0.5 each for sample and decode on one GPU), "
                         "none on a machine without GPUs")
    memory_gb: float | None = Field(None, gt=0, description="memory reserved per replica, in GiB")
    replicas: int | str = Field(
        1, description="actor pool size: a number, 'min..max' for Ray Data to scale, or 'auto' (chosen from the "
                       "cluster when the run starts: see pipeline/capacity.py auto_replicas)")

    @field_validator("num_gpus")
    @classmethod
    def _gpus(cls, v: float | str) -> float | str:
        if v != "auto" and v < 0:
            raise ValueError("must be 0 or more, or auto")
        return v

    @field_validator("replicas")
    @classmethod
    def _replicas(cls, v: int | str) -> int | str:
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v)
        if v == "auto":
            return v
        if isinstance(v, int):
            if v < 1:
                raise ValueError("must be at least 1")
            return v
        m = _REPLICAS.match(v)
        if not m:
            raise ValueError("must be a number, a range 'min..max' (e.g. '1..8'), or 'auto'")
        lo, hi = int(m.group(1)), int(m.group(2))
        if not 1 <= lo <= hi:
            raise ValueError(f"range {v!r} needs 1 <= min <= max")
        return f"{lo}..{hi}"

    @property
    def wants_gpu(self) -> bool:
        return self.num_gpus == "auto" or self.num_gpus > 0

    @property
    def replica_range(self) -> tuple[int, int]:
        if isinstance(self.replicas, int):
            return self.replicas, self.replicas
        if self.replicas == "auto":
            raise ValueError("replicas 'auto' is resolved against the cluster first (pipeline.capacity.auto_replicas)")
        lo, hi = self.replicas.split("..")
        return int(lo), int(hi)


class StageOptions(Strict):
    """What every stage's options have. A stage's own options subclass this in the stage's file.

    `RESOURCE_DEFAULTS` are the stage's own defaults for `resources`; a `resources` block in the job file
    changes only the keys it names (`sample: {resources: {num_cpus: 4}}` keeps the sampler's GPU)."""

    RESOURCE_DEFAULTS: ClassVar[dict] = {}
    loads_model: ClassVar[bool] = False  # runs the job's model (`model:`), whose dtype follows where it runs
    cpu_pool_grows: ClassVar[bool] = True  # replicas: auto without GPUs is one per two CPUs (False: one)
    batch_size: int = Field(1, ge=1, description="rows per call of the stage")
    resources: Resources = Field(default_factory=Resources, description="what one replica asks Ray for; a block here changes only the keys it names")
    # The job's storage_options, set when the job file is loaded (pipeline/spec.py), not a key of their own: for
    # pixel settings read from object storage while planning (the fingerprint of an expand.model in s3://).
    _storage_options: dict = PrivateAttr(default_factory=dict)

    @classmethod
    def resource_defaults(cls, data: dict) -> dict:
        """The stage's default `resources` for these options (a stage whose needs depend on its settings
        overrides this)."""
        return cls.RESOURCE_DEFAULTS

    @model_validator(mode="before")
    @classmethod
    def _stage_resource_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            defaults = cls.resource_defaults(data)
            given = data.get("resources")
            if given is None:
                data = {**data, "resources": dict(defaults)}
            elif isinstance(given, dict):
                data = {**data, "resources": {**defaults, **given}}
        return data

    def pixel_settings(self) -> dict[str, Any]:
        """The options that change a video's pixels, folded into every `params_hash` (none by default)."""
        return {}

    def resolved(self, path: str, family) -> "StageOptions":
        """These options with any `auto` setting decided for the job's model (at `path`, of `family`); when the
        job file is loaded, so that `params_hash` is known before any model runs."""
        return self

    def check_model(self, model: ModelSpec, family) -> str | None:
        """Why these options cannot run with the job's model (checked when the job file is loaded), or None."""
        return None

    def check_row(self, row: dict) -> str | None:
        """Why these options cannot make this manifest row (it is then recorded invalid), or None."""
        return None


@dataclass(frozen=True)
class RunContext:
    """What a stage may know about the run it is part of, besides its own options."""

    run_id: str = ""
    output: str = ""
    storage_options: dict = field(default_factory=dict)
    manifest: str = ""
    model: ModelSpec = field(default_factory=ModelSpec)
    identity: dict | None = None  # stages.models.checkpoints.model_identity(): what decides the model's pixels


@dataclass
class LanguageModelProcessor:
    """A stage whose language model runs in Ray Data's own LLM processor (`ray.data.llm`, the vLLM engine)
    instead of in the stage: the stage turns each row into a request and takes each answer back; the
    processor batches the requests continuously across its replicas (pipeline/llm_processor.py)."""

    config: dict  # vLLMEngineProcessorConfig's arguments
    request: Callable[[dict], dict | None]  # row -> {"messages", "sampling_params"}, or None: nothing to ask
    answer: Callable[[dict, dict], None]  # (row, {"text", "input_tokens", "output_tokens", "seconds"}), in place


class Stage:
    name: ClassVar[str]
    Options: ClassVar[type[StageOptions]] = StageOptions
    holds_model: bool = False
    # The row contract: the keys a stage needs from the stages before it, the keys it adds, and the keys it
    # takes away (a payload used up: latents once decoded). pipeline/graph.py checks the chain before a run.
    # A variant's record fields are there from the start (stages.common.variant.FIELDS).
    reads: ClassVar[tuple[str, ...]] = ()
    writes: ClassVar[tuple[str, ...]] = ()
    consumes: ClassVar[tuple[str, ...]] = ()
    paces_blocks: ClassVar[bool] = False  # blocks between operators hold one batch of this stage (block_rows)

    def __init__(self, options: StageOptions | None = None, ctx: RunContext | None = None):
        self.options = options if options is not None else self.Options()
        self.ctx = ctx or RunContext()

    @property
    def on_ray(self) -> bool:
        """Whether the stage has work on Ray in this job (a stage whose work was done while planning, like
        the template expander, has none, and no operator is built for it)."""
        return True

    def plan(self, row: dict, variants: list[dict]) -> None:
        """Work done in the driver while planning, on the new variants of one manifest row (in place); the
        template expander writes its prompts here. Nothing by default."""

    def block_rows(self) -> int:
        """Rows per block between operators when this stage paces them (`paces_blocks`): one batch of it."""
        return self.options.batch_size

    def llm_processor(self, resources: Resources) -> LanguageModelProcessor | None:
        """When the stage's work runs in Ray Data's LLM processor instead of in the stage (None: it does not)."""
        return None

    def setup(self) -> None:
        """Load what the stage needs; runs once per worker, in the worker."""

    def __call__(self, rows: list[dict]) -> list[dict]:
        raise NotImplementedError


class ContractError(ValueError):
    """The stages' row contract does not hold: a stage reads a key that no stage before it provides."""


def check_chain(stages: list[Stage], given: tuple[str, ...]) -> None:
    """Raise `ContractError`, naming both stages, when a stage reads a key that the stages before it do not
    provide (`given`: what every planned variant carries)."""
    have, taker = set(given), {}
    for i, stage in enumerate(stages):
        for key in stage.reads:
            if key in have:
                continue
            later = next((s.name for s in stages[i + 1:] if key in s.writes), None)
            if key in taker:
                why = f"stage '{taker[key]}' before it consumes it"
            elif later:
                why = f"only stage '{later}' writes it, and it runs after '{stage.name}'"
            else:
                prev = f"the stage before it, '{stages[i - 1].name}', does not write it" if i else "it is first"
                why = f"no stage writes it ({prev})"
            raise ContractError(f"stage '{stage.name}' reads row key '{key}', but {why}")
        for key in stage.consumes:
            have.discard(key)
            taker[key] = stage.name
        for key in stage.writes:
            have.add(key)
            taker.pop(key, None)


def payload_keys(stages: list[Stage], given: tuple[str, ...]) -> tuple[str, ...]:
    """The keys that only travel between stages (latents, frames, encoded bytes): what the stages write that
    no record keeps. A row recorded as failed mid-way drops them."""
    return tuple(dict.fromkeys(k for s in stages for k in s.writes if k not in given))
