"""Where and how a model runs: the device, torch's threads, dtype names, and quiet loading.

torch is imported inside these functions, never at import: CPU-only workers (validation, filter, encode)
import the models package and would otherwise pay ~3 CPU-s and ~400 MB each for torch.
"""
from __future__ import annotations

import os
import warnings


def pick_device(num_gpus: float) -> str:
    import torch

    return "cuda" if num_gpus and torch.cuda.is_available() else "cpu"  # num_gpus may be "auto"


def use_threads(num_cpus: float) -> None:
    """Torch threads for one replica: the CPUs it asked for, so replicas on one node do not oversubscribe it."""
    import torch

    torch.set_num_threads(max(1, round(num_cpus)))


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def quiet_loading() -> None:
    """Loading progress bars and deprecation chatter would flood every actor's log."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)


def gpu_peak_gib(device: str) -> float | None:
    """The most GPU memory this process held since the last call, in GiB (and the count starts again); None off
    CUDA. Recorded per stage, so a real run shows what each model stage needed."""
    if not device.startswith("cuda"):
        return None
    import torch

    peak = torch.cuda.max_memory_allocated() / 2**30
    torch.cuda.reset_peak_memory_stats()
    return round(peak, 3)


def auto_dtype(path: str, on_gpu: bool) -> str:
    """`dtype: auto`: bfloat16 for a real checkpoint that runs on a GPU (half the weights' memory, and the GPU's
    fast matmuls: a 14B model does not fit an 80 GB GPU in float32); float32 on CPU, where bfloat16 matmuls are
    slow, and for the built-in models (their params_hash unchanged)."""
    return "bfloat16" if on_gpu and not path.startswith("builtin:") else "float32"


def gpu_memory_settings(num_gpus: float) -> dict:
    """How a process that holds `num_gpus` of one GPU bounds its memory: a fraction below 1 caps PyTorch's caching
    allocator at that share of the GPU (without a cap the sampler keeps its peak cached and the decoder beside it
    runs out of memory), and expandable segments return freed memory in whole segments instead of fragments."""
    fraction = num_gpus if isinstance(num_gpus, (int, float)) and 0 < num_gpus < 1 else None
    return {"memory_fraction": fraction, "alloc_conf": "expandable_segments:True"}


def prepare_device(device: str, num_gpus: float) -> None:
    """Before a model is loaded on `device`: on CUDA, the memory bounds above, and TF32 matmuls and convolutions
    for what stays in float32 (a VAE: diffusers' examples keep Wan's in float32) instead of true float32 ones."""
    if not device.startswith("cuda"):
        return
    settings = gpu_memory_settings(num_gpus)
    for name in ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF"):  # torch's new name and its old one
        os.environ.setdefault(name, settings["alloc_conf"])  # read at the first allocation
    import torch

    if settings["memory_fraction"]:
        torch.cuda.set_per_process_memory_fraction(settings["memory_fraction"])
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
