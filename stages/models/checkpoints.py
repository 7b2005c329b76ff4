"""Where model weights come from, and their identity.

- `builtin:tiny-wan`: a tiny WanPipeline (transformer, VAE, UMT5 text encoder, and a byte-level BPE
  tokenizer trained offline with `tokenizers`) built from configs with a fixed seed, saved once with
  `save_pretrained` into the cache folder, then loaded with `from_pretrained` like any checkpoint.
- a local folder in diffusers layout (`model_index.json` at its root);
- a hub id (`Wan-AI/Wan2.1-T2V-1.3B-Diffusers`), resolved by diffusers/huggingface_hub as usual;
- an fsspec URI (`s3://bucket/Wan2.1-T2V-14B-Diffusers/`): copied once per node into the cache
  (stages/models/staging.py), then loaded from there; its fingerprint comes from the store's metadata;
- `builtin:null`: no weights at all, for the `null` family (stages/models/families.py), which ignores its path.

`model_identity()` gives what goes into `params_hash`: family, path, revision, dtype and a fingerprint
of the weights, so that new weights mean new videos.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from stages.models import builtin
from stages.models.lora import remote_file
from stages.models.staging import cache_dir, is_remote, remote_fingerprint, stage

BUILTIN_PREFIX = "builtin:"
# Bump when the builtin recipe changes: the fingerprint changes with it, so outputs regenerate.
BUILTIN_MODELS = {"tiny-wan": "tiny-wan-v1", "tiny-wan22": "tiny-wan22-v1", "tiny-wan22-ti2v": "tiny-wan22-ti2v-v1",
                  "tiny-ltx": "tiny-ltx-v1", "tiny-cogvideox": "tiny-cogvideox-v1",
                  "tiny-hunyuan": "tiny-hunyuan-v1", "tiny-skyreels": "tiny-skyreels-v1",
                  "tiny-skyreels-df": "tiny-skyreels-df-v1", "tiny-wan-i2v": "tiny-wan-i2v-v1",
                  "tiny-wan-flf2v": "tiny-wan-flf2v-v1", "tiny-wan22-i2v": "tiny-wan22-i2v-v1",
                  "tiny-skyreels-i2v": "tiny-skyreels-i2v-v1", "tiny-cogvideox-i2v": "tiny-cogvideox-i2v-v1"}
# Builtins without weights (the `null` family's): nothing to build; the version is their fingerprint.
WEIGHTLESS_BUILTINS = {"null": "null-v1"}

def builder_for(name: str):
    """The function that builds the builtin model `name` (stages/models/builtin.py)."""
    return getattr(builtin, "build_" + name.replace("-", "_"))


# Builtins trained by the project and shipped in the package, not built: a folder in stages/models/weights/
# (made by training/toy_world; its `rushes_recommended.json` holds the settings it was trained for).
SHIPPED_BUILTINS = {name: Path(__file__).parent / "weights" / name for name in ("toy-shapes", "toy-clip")}
RECOMMENDED_FILE = "rushes_recommended.json"


def shipped(name: str) -> Path:
    folder = SHIPPED_BUILTINS[name]
    if not any((folder / marker).is_file() for marker in ("model_index.json", "config.json")):
        raise ValueError(f"builtin:{name} is not in this installation ({folder} holds no model)")
    return folder


def trained_settings(path: str | None) -> dict:
    """The sampling settings a model was trained for: a shipped builtin's, or those in the `rushes_recommended.json`
    of a local checkpoint folder (one that training/toy_world builds, named by its path); {} for any other path."""
    path = path or ""
    name = path.removeprefix(BUILTIN_PREFIX)
    if path.startswith(BUILTIN_PREFIX):
        folder = SHIPPED_BUILTINS.get(name)
    elif path and not is_remote(path):
        folder = Path(path.removeprefix("file://"))
    else:
        folder = None
    f = folder / RECOMMENDED_FILE if folder else None
    return json.loads(f.read_text()) if f and f.is_file() else {}


def resolve_model_path(path: str, storage_options: dict | None = None) -> str:
    """A path that `from_pretrained` accepts; builds the builtin model into the cache on first use, and copies a
    checkpoint in object storage into this node's cache (once per node)."""
    if is_remote(path):
        return stage(path, storage_options)
    if not path.startswith(BUILTIN_PREFIX):
        return path
    name = path[len(BUILTIN_PREFIX):]
    if name in WEIGHTLESS_BUILTINS:
        return path
    if name in SHIPPED_BUILTINS:
        return str(shipped(name))
    if name not in BUILTIN_MODELS:
        known = [*BUILTIN_MODELS, *SHIPPED_BUILTINS, *WEIGHTLESS_BUILTINS]
        raise ValueError(f"model.path: unknown builtin model '{path}' "
                         f"(known: {', '.join(BUILTIN_PREFIX + k for k in known)})")
    return build_once(BUILTIN_MODELS[name], "model_index.json", builder_for(name))


def checkpoint_on_disk(path: str, revision: str | None = None) -> Path | None:
    """The folder of a checkpoint that is already here, without building or downloading anything: a local
    folder, a builtin model already built into the cache, or a hub snapshot already in its cache (a checkpoint in
    object storage is not: its files are read there, stages/models/references.py)."""
    if is_remote(path):
        return None
    if path.startswith(BUILTIN_PREFIX):
        name = path[len(BUILTIN_PREFIX):]
        folder = (cache_dir() / "builtin" / BUILTIN_MODELS[name] if name in BUILTIN_MODELS else
                  SHIPPED_BUILTINS.get(name))
        return folder if folder and folder.is_dir() else None
    if Path(path).is_dir():
        return Path(path)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(path, revision=revision, local_files_only=True))
    except Exception:  # noqa: BLE001 - not in the cache (or not a hub id): nothing on disk
        return None


def resolve_builtin(path: str, known: dict[str, str], build, key: str, kind: str = "model") -> str:
    """A path that `from_pretrained` accepts for a transformers model that may be a builtin (`known`: name ->
    versioned folder), built into the cache by `build(folder)` on first use; `key` names the job-file key."""
    if not path.startswith(BUILTIN_PREFIX):
        return path
    name = path[len(BUILTIN_PREFIX):]
    if name in known and known[name] in SHIPPED_BUILTINS:  # trained and shipped, not built
        return str(shipped(known[name]))
    if name not in known:
        raise ValueError(f"{key}: unknown builtin {kind} '{path}' "
                         f"(known: {', '.join(BUILTIN_PREFIX + k for k in known)})")
    return build_once(known[name], "config.json", build)


def build_once(folder: str, marker: str, build) -> str:
    """$RUSHES_CACHE/builtin/<folder>, made by `build(path)` unless its `marker` file is already there."""
    target = cache_dir() / "builtin" / folder
    if not (target / marker).exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        # Build aside and rename into place: actors on one node may race to build it.
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            build(tmp)
            try:
                os.rename(tmp, target)
            except OSError:
                if not (target / marker).exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def weights_fingerprint(folder: str | Path, only: str | None = None) -> str:
    """sha256 over a checkpoint folder: whole files up to 64 MiB, else size plus head and tail.

    Hashing every byte of a 30 GB checkpoint on each run would cost minutes; the safetensors header
    (at the head) and the size change whenever the tensors do.
    """
    folder = Path(folder)
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")
                    and (only is None or p.relative_to(folder).as_posix() == only)):  # only: one file (a LoRA's)
        rel = f.relative_to(folder).as_posix()
        size = f.stat().st_size
        h.update(f"{rel}\0{size}\0".encode())
        with f.open("rb") as fh:
            if size <= 64 << 20:
                h.update(fh.read())
            else:
                h.update(fh.read(1 << 20))
                fh.seek(-(1 << 20), os.SEEK_END)
                h.update(fh.read())
    return h.hexdigest()


def fingerprint_of(local: str, revision: str | None, storage_options: dict | None = None) -> str | None:
    """The weights fingerprint of a checkpoint folder, of a checkpoint in object storage (from the store's
    metadata: nothing is downloaded), or of a hub id already in the local cache, without loading it; None for a
    hub id not cached here (its id and revision then stand for it)."""
    if is_remote(local):
        return remote_fingerprint(local, storage_options)
    if Path(local).is_dir():
        return weights_fingerprint(local)
    try:
        from huggingface_hub import snapshot_download

        return weights_fingerprint(snapshot_download(local, revision=revision, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached here
        return None


def lora_identity(lora, storage_options: dict | None = None) -> dict:
    """What decides the adapter's effect, without loading it: path, file, scale and a weights fingerprint (of an
    adapter in object storage: of its file there, from the store's metadata)."""
    fingerprint = None
    path = Path(lora.path)
    if is_remote(lora.path):
        fingerprint = remote_fingerprint(remote_file(lora), storage_options)
    elif path.is_file():
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


def model_identity(family: str, path: str, revision: str | None, dtype: str, loras: list = (),
                   storage_options: dict | None = None) -> dict:
    """Everything about the model that decides the pixels, without loading it (LoRAs only when there are
    any, so that a model without them keeps its identity). Weights in object storage are fingerprinted from the
    store's metadata with `storage_options`; none are downloaded here."""
    weightless = path.startswith(BUILTIN_PREFIX) and path[len(BUILTIN_PREFIX):] in WEIGHTLESS_BUILTINS
    if weightless:
        fingerprint = WEIGHTLESS_BUILTINS[path[len(BUILTIN_PREFIX):]]
    else:
        fingerprint = fingerprint_of(path if is_remote(path) else resolve_model_path(path), revision,
                                     storage_options)
    identity = {"family": family, "path": path, "revision": revision, "dtype": dtype, "weights_hash": fingerprint}
    if loras:
        identity["loras"] = [lora_identity(lora, storage_options) for lora in loras]
    return identity

