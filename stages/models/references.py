"""Every model reference of a job checked before any worker starts, without loading weights.

In: the job's `model:` (path, family, LoRAs), its family and its `storage_options`. Out: the problems (each naming its job-file key:
the run is refused) and the warnings (said, and the run goes on). A wrong reference found only when a worker
loads it would fail every actor's setup three times, on a cluster after minutes of loading, with the reason
buried in Ray's tracebacks.

- `model.path`: a local folder must exist and be a diffusers checkpoint (`model_index.json`); its pipeline
  class must be one the family runs (a SkyReels-V2 diffusion-forcing checkpoint under `family: skyreels` is
  refused naming both). A built-in model is checked against its recipe without building it. A hub id that is
  not in the local cache, on a machine that cannot reach the hub, is a warning: the workers may have a cache.
  A checkpoint in object storage (`s3://...`) must have objects under its prefix and a `model_index.json`,
  which is read there for its pipeline class (nothing else is downloaded).
- `model.loras[i].path`: a local file or folder must exist (with `weight_name` in it); an adapter that is
  here and a checkpoint whose transformer config is here are matched layer by layer (on the meta device: the
  transformer is never built): an adapter made for another architecture is refused with the layers that
  do not fit. An adapter in object storage must exist there (its file, with `weight_name` under a folder URI).
"""
from __future__ import annotations

import functools
import json
import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

from stages.common.storage import StorageError, filesystem, join, read_bytes
from stages.models.builtin import BUILTIN_PIPELINES
from stages.models.checkpoints import BUILTIN_PREFIX, checkpoint_on_disk
from stages.models.lora import remote_file
from stages.models.staging import is_remote, remote_listing

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(path: str) -> bool:
    return bool(HUB_ID.match(path)) and not Path(path).exists()


@functools.lru_cache(maxsize=1)
def hub_reachable() -> bool:
    """Whether this machine can reach the Hugging Face Hub (HF_HUB_OFFLINE=1: no, by policy)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=3).close()
        return True
    except OSError:
        return False


def pipeline_class_of(path: str) -> str | None:
    """The diffusers pipeline class a checkpoint declares, or None when it is not here to read."""
    if path.startswith(BUILTIN_PREFIX):
        return BUILTIN_PIPELINES.get(path[len(BUILTIN_PREFIX):])
    folder = checkpoint_on_disk(path)
    if folder is None:
        return None
    try:
        return json.loads((folder / "model_index.json").read_text()).get("_class_name")
    except (OSError, ValueError):
        return None


def remote_problem(key: str, uri: str, storage_options: dict | None) -> tuple[str | None, dict]:
    """(why the objects under `uri` cannot be used, or None; their listing)."""
    try:
        return None, remote_listing(uri, storage_options)
    except FileNotFoundError:
        return f"{key}: {uri!r} does not exist (no objects under it)", {}
    except StorageError as e:
        return f"{key}: {uri!r} cannot be listed: {e}", {}


def remote_pipeline_class(path: str, storage_options: dict | None) -> tuple[str | None, str | None]:
    """(the pipeline class a checkpoint in object storage declares, or None; why it is no checkpoint, or None)."""
    problem, listing = remote_problem("model.path", path, storage_options)
    if problem:
        return None, problem
    if "model_index.json" not in listing:
        return None, f"model.path: {path!r} is no diffusers checkpoint (no model_index.json under it)"
    fs, root = filesystem(path, storage_options)
    try:
        return json.loads(read_bytes(fs, join(root, "model_index.json"))).get("_class_name"), None
    except (StorageError, ValueError) as e:
        return None, f"model.path: cannot read {join(path, 'model_index.json')!r}: {e}"


def check_model_path(path: str, family, storage_options: dict | None = None) -> tuple[list[str], list[str]]:
    problems, warnings = [], []
    declared = None
    if is_remote(path):
        declared, problem = remote_pipeline_class(path, storage_options)
        if problem:
            return [problem], []
    elif path.startswith(BUILTIN_PREFIX):  # checked by name
        pass
    elif not is_hub_id(path):
        folder = Path(path).expanduser()
        if not folder.is_dir():
            return [f"model.path: {path!r} does not exist (a local folder, a hub id such as "
                    "'Wan-AI/Wan2.1-T2V-1.3B-Diffusers', or builtin:<name>)"], []
        if not (folder / "model_index.json").is_file():
            return [f"model.path: {path!r} is no diffusers checkpoint (no model_index.json in it)"], []
    elif checkpoint_on_disk(path) is None and not hub_reachable():
        warnings.append(f"model.path: {path!r} is not in this machine's Hugging Face cache and the hub cannot be "
                        "reached from here; the workers must have it in theirs (or stage it from object storage)")
    declared = declared or pipeline_class_of(path)
    if declared is not None and declared not in family.pipeline_classes:
        problems.append(f"model.path: {path!r} is a {declared} checkpoint, which family '{family.name}' does not run "
                        f"(it runs {', '.join(family.pipeline_classes)}); "
                        f"set model.family to the one that runs {declared}")
    return problems, warnings


def lora_layers(lora, pipeline_class: str) -> dict[str, tuple[int, int]] | None:
    """{transformer layer: (in, out)} an adapter changes, from its weights (diffusers' own loader converts the
    published formats); None when it is not a local file."""
    import diffusers

    path = Path(lora.path)
    folder, name = (path.parent, path.name) if path.is_file() else (path, lora.weight_name)
    if not folder.is_dir():
        return None
    state = getattr(diffusers, pipeline_class).lora_state_dict(str(folder), weight_name=name)
    state = state[0] if isinstance(state, tuple) else state
    layers = {}
    for key, tensor in state.items():
        m = re.match(r"^transformer\.(.+)\.lora_([AB])\.weight$", key)
        if m:
            a_in, b_out = layers.get(m.group(1), (None, None))
            layers[m.group(1)] = (tensor.shape[1], b_out) if m.group(2) == "A" else (a_in, tensor.shape[0])
    return layers


def transformer_layers(folder: Path, transformer_class: str) -> dict[str, tuple[int, int]] | None:
    """{layer: (in, out)} of the checkpoint's transformer, built on the meta device from its config alone."""
    import diffusers
    import torch

    config = folder / "transformer" / "config.json"
    if not config.is_file():
        return None
    cls = getattr(diffusers, transformer_class)
    with torch.device("meta"):
        model = cls.from_config(cls.load_config(str(folder), subfolder="transformer"))
    return {name: (m.in_features, m.out_features) for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear)}


def check_loras(loras: list, model_path: str, family, storage_options: dict | None = None) -> list[str]:
    problems = []
    for i, lora in enumerate(loras):
        key, path = f"model.loras[{i}].path", Path(lora.path)
        if is_remote(lora.path):  # copied by the workers: it must be there
            problem, _ = remote_problem(key, remote_file(lora), storage_options)
            problems += [problem] if problem else []
            continue
        if is_hub_id(lora.path):
            continue  # loaded from the hub by the workers
        if not path.exists():
            problems.append(f"{key}: {lora.path!r} does not exist")
            continue
        if path.is_dir() and lora.weight_name and not (path / lora.weight_name).is_file():
            problems.append(f"model.loras[{i}].weight_name: {lora.weight_name!r} is not in {lora.path!r}")
            continue
        folder = checkpoint_on_disk(model_path)
        if folder is None or not family.transformer_class:
            continue
        wanted = lora_layers(lora, family.pipeline_classes[0])
        have = transformer_layers(folder, family.transformer_class)
        if not wanted or have is None:
            continue
        missing = [n for n in wanted if n not in have]
        wrong = [n for n, (a, b) in wanted.items() if n in have and (a, b) != have[n]]
        if missing or wrong:
            example = (f"no layer {missing[0]}" if missing else
                       f"{wrong[0]} is {have[wrong[0]][0]}->{have[wrong[0]][1]}, the adapter "
                       f"{wanted[wrong[0]][0]}->{wanted[wrong[0]][1]}")
            problems.append(f"{key}: the adapter does not fit this model's transformer: {len(missing)} of its "
                            f"{len(wanted)} layers are missing and {len(wrong)} have other sizes ({example})")
    return problems


def check_references(model, family, storage_options: dict | None = None) -> tuple[list[str], list[str]]:
    """(problems, warnings) of the job's model references (`storage_options`: the job's, for those in object
    storage)."""
    problems, warnings = check_model_path(model.path, family, storage_options)
    if not problems:
        problems += check_loras(model.loras, model.path, family, storage_options)
    return problems, warnings
