"""Where and how a model runs: the device, torch's threads, dtype names, and quiet loading.

torch is imported inside these functions, never at import: CPU-only workers (validation, filter, encode)
import the models package and would otherwise pay ~3 CPU-s and ~400 MB each for torch.
"""
from __future__ import annotations

import warnings


def pick_device(num_gpus: float) -> str:
    import torch

    return "cuda" if num_gpus > 0 and torch.cuda.is_available() else "cpu"


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
