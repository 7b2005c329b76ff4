"""LoRA adapters: `model.loras: [{path, scale}]`, loaded through peft into the denoiser.

In: the job file's LoRA list and a loaded pipeline. Out: the pipeline with each adapter loaded into its
transformer (and into `transformer_2` for Wan2.2 A14B, whose two experts both take it) and active at its
scale. `lora_identity()` is what goes into the model identity, and so into `params_hash`: the path, the
file, the scale and a fingerprint of the weights (a new LoRA file regenerates its videos).

An adapter in object storage (`s3://bucket/loras/style.safetensors`, or a folder URI with `weight_name`) is
copied once per node into the cache by `staged_loras()` (stages/models/staging.py) before the pipeline loads it.
"""
from __future__ import annotations

from pathlib import Path

from pydantic import Field

from stages.common.strict import Strict
from stages.models.staging import is_remote, stage


class LoraSpec(Strict):
    path: str = Field(..., min_length=1, description="a .safetensors file, a folder, a hub repo id, or an fsspec "
                                                     "URI of either (s3://...), copied once per node")
    weight_name: str | None = Field(None, description="the file inside a folder or hub repo")
    scale: float = Field(1.0, description="the adapter's strength")


def remote_file(lora) -> str:
    """The URI of an adapter in object storage: its path, or the `weight_name` file inside it."""
    return f"{lora.path.rstrip('/')}/{lora.weight_name}" if lora.weight_name else lora.path


def staged_loras(loras: list, storage_options: dict | None = None) -> list:
    """`loras` with each one in object storage replaced by its copy in this node's cache (only its file when
    `weight_name` names it)."""
    return [lora.model_copy(update={"path": stage(remote_file(lora), storage_options)}) if is_remote(lora.path)
            else lora for lora in loras]


def _where(lora) -> tuple[str, dict]:
    """(folder or repo, load_lora_weights keyword arguments)."""
    if is_remote(lora.path):  # diffusers would take the URI for a hub id
        raise ValueError(f"model.loras: {lora.path} is in object storage: stage it first (staged_loras)")
    path = Path(lora.path)
    if path.is_file():
        return str(path.parent), {"weight_name": path.name}
    return lora.path, ({"weight_name": lora.weight_name} if lora.weight_name else {})


def load_loras(pipe, loras: list, transformers: tuple[str, ...]) -> None:
    """Load every adapter (peft) and activate them together, each at its scale."""
    names = []
    for i, lora in enumerate(loras):
        name = f"lora{i}"
        source, kwargs = _where(lora)
        pipe.load_lora_weights(source, adapter_name=name, **kwargs)
        if "transformer_2" in transformers and getattr(pipe, "transformer_2", None) is not None:
            pipe.load_lora_weights(source, adapter_name=name, load_into_transformer_2=True, **kwargs)
        names.append(name)
    pipe.set_adapters(names, adapter_weights=[lora.scale for lora in loras])
