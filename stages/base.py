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
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Strict(BaseModel):
    """Job-file models: an unknown key is an error, and so is a bad value set after construction."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


_REPLICAS = re.compile(r"^\s*(\d+)\s*\.\.\s*(\d+)\s*$")


class Resources(Strict):
    """What one replica of a stage asks Ray for, and how many replicas run."""

    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0, description="GPUs per replica; fractions share a GPU")
    memory_gb: float | None = Field(None, gt=0, description="memory reserved per replica, in GiB")
    replicas: int | str = Field(
        1, description="actor pool size: a number, 'min..max' for Ray Data to scale, or 'auto' (chosen from the "
                       "cluster when the run starts: see pipeline/graph.py auto_replicas)")

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
    def replica_range(self) -> tuple[int, int]:
        if isinstance(self.replicas, int):
            return self.replicas, self.replicas
        if self.replicas == "auto":
            raise ValueError("replicas 'auto' is resolved against the cluster first (pipeline.graph.auto_replicas)")
        lo, hi = self.replicas.split("..")
        return int(lo), int(hi)


class StageOptions(Strict):
    """What every stage's options have. A stage's own options subclass this in the stage's file.

    `RESOURCE_DEFAULTS` are the stage's own defaults for `resources`; a `resources` block in the job file
    changes only the keys it names (`sample: {resources: {num_cpus: 4}}` keeps the sampler's GPU)."""

    RESOURCE_DEFAULTS: ClassVar[dict] = {}
    batch_size: int = Field(1, ge=1, description="rows per call of the stage")
    resources: Resources = Field(default_factory=Resources)

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


class ModelSpec(Strict):
    family: str = Field("wan", description="built-in family (wan, ltx, cogvideox, hunyuan, skyreels, skyreels_df, "
                                           "null) or 'package.module:ClassName'")
    path: str = Field("", description="builtin:tiny-<family>, a local folder, or a hub id; unset: the family's "
                                      "builtin tiny model (builtin:tiny-wan, builtin:tiny-ltx, ...)")
    revision: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    loras: list["LoraSpec"] = Field(default_factory=list, description="LoRA adapters [{path, weight_name, scale}], "
                                    "loaded through peft into the transformer (and transformer_2 for Wan2.2)")

    @field_validator("family")
    @classmethod
    def _family_exists(cls, v: str) -> str:
        from stages.families import family_for

        family_for(v)
        return v

    @model_validator(mode="after")
    def _family_tiny_model_by_default(self) -> "ModelSpec":
        if not self.path:
            # a user's family ('package.module:Class'): tiny Wan, the default before families had their own
            tiny = ("builtin:null" if self.family == "null" else "builtin:tiny-wan" if ":" in self.family
                    else f"builtin:tiny-{self.family.replace('_', '-')}")
            object.__setattr__(self, "path", tiny)
        return self


from stages.lora import LoraSpec  # noqa: E402 - stages.lora needs Strict from above

ModelSpec.model_rebuild()


@dataclass(frozen=True)
class RunContext:
    """What a stage may know about the run it is part of, besides its own options."""

    run_id: str = ""
    output: str = ""
    storage_options: dict = field(default_factory=dict)
    manifest: str = ""
    model: ModelSpec = field(default_factory=ModelSpec)
    identity: dict | None = None  # stages.checkpoints.model_identity(): what decides the model's pixels


class Stage:
    name: ClassVar[str]
    Options: ClassVar[type[StageOptions]] = StageOptions
    holds_model: bool = False

    def __init__(self, options: StageOptions | None = None, ctx: RunContext | None = None):
        self.options = options if options is not None else self.Options()
        self.ctx = ctx or RunContext()

    @property
    def on_ray(self) -> bool:
        """Whether the stage has work on Ray in this job (a stage whose work was done while planning, like
        the template expander, has none, and no operator is built for it)."""
        return True

    def setup(self) -> None:
        """Load what the stage needs; runs once per worker, in the worker."""

    def __call__(self, rows: list[dict]) -> list[dict]:
        raise NotImplementedError


def pick_device(num_gpus: float) -> str:
    import torch

    return "cuda" if num_gpus > 0 and torch.cuda.is_available() else "cpu"


def use_threads(resources: Resources) -> None:
    """Torch threads for one replica: the CPUs it asked for, so replicas on one node do not oversubscribe it."""
    import torch

    torch.set_num_threads(max(1, round(resources.num_cpus)))
