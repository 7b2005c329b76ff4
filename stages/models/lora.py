"""LoRA adapters: `model.loras: [{path, scale}]`, loaded through peft into the denoiser.

In: the job file's LoRA list and a loaded pipeline. Out: the pipeline with each adapter loaded into its
transformer (and into `transformer_2` for Wan2.2 A14B, whose two experts both take it) and active at its
scale. `lora_identity()` is what goes into the model identity, and so into `params_hash`: the path, the
file, the scale and a fingerprint of the weights (a new LoRA file regenerates its videos).
"""
from __future__ import annotations

from pathlib import Path

from pydantic import Field

from stages.common.strict import Strict


class LoraSpec(Strict):
    path: str = Field(..., min_length=1, description="a .safetensors file, a folder, or a hub repo id")
    weight_name: str | None = Field(None, description="the file inside a folder or hub repo")
    scale: float = Field(1.0, description="the adapter's strength")


def _where(lora) -> tuple[str, dict]:
    """(folder or repo, load_lora_weights keyword arguments)."""
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
