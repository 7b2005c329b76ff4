"""LoRA adapters: `model.loras: [{path, scale}]`, loaded through peft into the denoiser.

In: the job file's LoRA list and a loaded pipeline. Out: the pipeline with each adapter loaded into its
transformer (and into `transformer_2` for Wan2.2 A14B, whose two experts both take it) and active at its
scale. `lora_identity()` is what goes into the model identity, and so into `params_hash`: the path, the
file, the scale and a fingerprint of the weights (a new LoRA file regenerates its videos).
"""
from __future__ import annotations

from pathlib import Path

from pydantic import Field

from stages.base import Strict


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


def lora_identity(lora) -> dict:
    """What decides the adapter's effect, without loading it: path, file, scale and a weights fingerprint."""
    from stages.checkpoints import weights_fingerprint

    fingerprint = None
    path = Path(lora.path)
    if path.is_file():
        fingerprint = weights_fingerprint(path.parent, only=path.name)
    elif path.is_dir():
        fingerprint = weights_fingerprint(path, only=lora.weight_name)
    else:
        try:  # a hub repo already in the local cache
            from huggingface_hub import snapshot_download

            fingerprint = weights_fingerprint(snapshot_download(lora.path, local_files_only=True),
                                              only=lora.weight_name)
        except Exception:  # noqa: BLE001 - not downloaded here: its id and file name are the identity
            fingerprint = None
    return {"path": lora.path, "weight_name": lora.weight_name, "scale": lora.scale, "weights_hash": fingerprint}
