"""The job file's `model:` section: which family, which weights, in which dtype, with which LoRAs."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from stages.common.strict import Strict
from stages.models.devices import auto_dtype
from stages.models.families import family_for
from stages.models.lora import LoraSpec
from stages.models.simulation import SimulatedGpu


class ModelSpec(Strict):
    family: str = Field("wan", description="built-in family (wan, ltx, cogvideox, hunyuan, skyreels, skyreels_df, "
                                           "null) or 'package.module:ClassName'")
    path: str = Field("", description="builtin:tiny-<family>, a local folder, a hub id, or an fsspec URI "
                                      "(s3://bucket/Wan2.1-T2V-14B-Diffusers/, copied once per node); unset: the "
                                      "family's builtin tiny model (builtin:tiny-wan, builtin:tiny-ltx, ...)")
    revision: str | None = Field(None, description="the hub revision (branch, tag or commit) of a hub id")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="the weights' dtype; auto: bfloat16 for a real checkpoint when the model stages ask for "
                            "GPUs, else float32 (and for the built-in models); each family keeps its VAE in the dtype "
                            "its model card asks for (Wan: float32)")
    loras: list[LoraSpec] = Field(default_factory=list, description="LoRA adapters [{path, weight_name, scale}], "
                                  "loaded through peft into the transformer (and transformer_2 for Wan2.2)")
    simulate: SimulatedGpu | None = Field(
        None, description="family null only: how long each window holds the sampler's and the decoder's GPU "
                          "(slept, so the CPU stays free), in seconds or from a profile of a real model on a real "
                          "GPU; for measuring how busy a fleet's GPUs are kept (bench/fleet.py)")

    @field_validator("family")
    @classmethod
    def _family_exists(cls, v: str) -> str:
        family_for(v)
        return v

    def dtype_on(self, device: str) -> str:
        """The dtype the weights load in on `device`: the job file's, with `auto` decided for that device (a job
        file decides it when it is loaded, pipeline/spec.py; a stage used on its own decides it here)."""
        return auto_dtype(self.path, device.startswith("cuda")) if self.dtype == "auto" else self.dtype

    @model_validator(mode="after")
    def _simulate_only_null(self) -> "ModelSpec":
        if self.simulate is not None and self.family != "null":
            raise ValueError(f"simulate: only the null family simulates GPU time (family is {self.family!r})")
        return self

    @model_validator(mode="after")
    def _family_tiny_model_by_default(self) -> "ModelSpec":
        if not self.path:
            # a user's family ('package.module:Class'): tiny Wan, the default before families had their own
            tiny = ("builtin:null" if self.family == "null" else "builtin:tiny-wan" if ":" in self.family
                    else f"builtin:tiny-{self.family.replace('_', '-')}")
            object.__setattr__(self, "path", tiny)
        return self
