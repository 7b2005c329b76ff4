"""A plan before any work: will the job's model fit the GPU, and how many GPU-hours will the job take.

In: a loaded job file, a GPU kind (`--gpu h100-80gb`, or the cluster's own, read from a GPU worker), and how
many GPUs. Out: a `GpuPlan`, printed by `rushes plan` and by `rushes run` before it starts any work:
- per model stage (the sampler: denoisers and text encoders; the decoder: the VAE) the weights in the job's
  dtype, counted from the checkpoint's configs on the meta device (never loading weights), the peak activation
  memory at the job's largest shape, whether it fits the GPU with 10% headroom, and if not, what would make it
  fit (text encoder offload, VAE tiling, fp8 weight storage, one resident expert) with the numbers;
- FLOPs per variant at each shape the job asks for (windows of a long video counted each), the GPU-hours of
  every variant still to make at a stated MFU, and the wall time on N GPUs.
The numbers come from stages/models/memory_plan.py; the checkpoint's config files must be here: a local
folder, a built-in model, a hub snapshot in the cache, or (when the hub can be reached) its config files
fetched alone.
"""
from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.plan import Planner
from pipeline.spec import JobSpec
from stages.common.variant import sampling_params
from stages.long_video.windows import windows_for
from stages.models.gpus import GPU_TABLE as GPUS
from stages.models.checkpoints import BUILTIN_PREFIX, checkpoint_on_disk, resolve_model_path
from stages.models.references import hub_reachable, is_hub_id

log = logging.getLogger("rushes")

DEFAULT_MFU = 0.35  # a sound guess for large video DiTs in bf16 on Hopper, until bench/gpu.py measures one
# What the plan's fixes are called in a job file (None: Rushes has no such option yet).
FIX_KEYS = {"offload_text_encoder": "sample.offload_text_encoder: true", "fp8": "sample.fp8_storage: true",
            "tiling": "decode.tiling: on", "one_expert": None}


@dataclass
class GpuPlan:
    gpu: str | None
    gpus: int
    mfu: float
    model: str
    stages: list[dict] = field(default_factory=list)  # {stage, needs_gib, budget_gib, fits, fix}
    variants: int = 0
    invalid: list[dict] = field(default_factory=list)  # the invalid rows (each with its `error`)
    flops: float = 0.0  # of every variant still to make
    largest: tuple[int, int, int] | None = None  # (height, width, frames of one window)
    notes: list[str] = field(default_factory=list)

    @property
    def gpu_hours(self) -> float | None:
        if self.gpu is None:
            return None
        return self.flops / (GPUS[self.gpu][1] * 1e12 * self.mfu) / 3600

    @property
    def fits(self) -> bool:
        return all(s["fits"] for s in self.stages)

    def render(self) -> str:
        lines = [f"plan: model {self.model} on {self.gpu or 'an unknown GPU'}"]
        for s in self.stages:
            verdict = "fits" if s["fits"] else "does NOT fit"
            lines.append(f"  {s['stage']:<8} needs {s['needs_gib']:.1f} GiB of {s['budget_gib']:.1f} GiB usable: "
                         f"{verdict} ({s['detail']})")
            if not s["fits"]:
                lines.append(f"           {s['advice']}")
        if self.largest:
            h, w, f = self.largest
            lines.append(f"  largest shape {h}x{w}, {f} frames a window")
        lines.append(f"  {self.variants} variants to make: {self.flops / 1e15:,.1f} PFLOP of denoising")
        if self.invalid:
            first = self.invalid[0]
            lines.append(f"  {len(self.invalid)} invalid row(s), not planned; the first: row {first.get('id')!r}: "
                         f"{first.get('error')}")
        if self.gpu_hours is not None:
            lines.append(f"  {self.gpu_hours:.4g} GPU-hours at MFU {self.mfu:.0%} of {self.gpu}'s dense bf16 peak; "
                         f"{self.gpu_hours / self.gpus:.4g} h on {self.gpus} GPU(s) (sampling only)")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def cluster_gpu(spec: JobSpec) -> str | None:
    """The cluster's GPU kind, read on a GPU worker, when the job names a cluster (ray.address or RAY_ADDRESS):
    the known GPU whose memory is nearest to what the worker's device reports (None: no cluster, no GPU)."""
    import os

    address = spec.ray.address or os.environ.get("RAY_ADDRESS")
    if not address:
        return None
    import ray

    ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    return running_cluster_gpu(spec.ray.resource_wait_s)


def running_cluster_gpu(wait_s: float) -> str | None:
    """The GPU kind of the Ray cluster this process is connected to, or None when it has no GPU."""
    import ray

    if not ray.cluster_resources().get("GPU"):
        return None

    @ray.remote(num_gpus=1)
    def memory_gib() -> float | None:
        import torch

        return torch.cuda.get_device_properties(0).total_memory / 2**30 if torch.cuda.is_available() else None

    ref = memory_gib.remote()
    try:
        gib = ray.get(ref, timeout=wait_s)  # None: logical GPUs without a device (a test cluster)
    except ray.exceptions.GetTimeoutError:  # every GPU busy, or none a 1-GPU task can use: the run finds out why
        ray.cancel(ref, force=True)
        log.warning("the cluster's GPU kind could not be read within ray.resource_wait_s=%gs (no GPU took a "
                    "1-GPU task): planned without it", wait_s)
        return None
    return None if gib is None else min(GPUS, key=lambda name: abs(GPUS[name][0] - gib))


def config_folder(path: str, revision: str | None) -> Path | None:
    """A folder with the checkpoint's config files, without downloading any weight."""
    if path.startswith(BUILTIN_PREFIX):
        return Path(resolve_model_path(path))
    folder = checkpoint_on_disk(path, revision)
    if folder is None and is_hub_id(path) and hub_reachable():
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(path, revision=revision, allow_patterns=["*.json"]))
    return folder


@functools.lru_cache(maxsize=256)
def window_flops(folder: str, shape: tuple[int, int, int], steps: int, cfg: bool) -> float:
    from stages.models.memory_plan import variant_flops

    return variant_flops(folder, *shape, steps=steps, cfg=cfg)


def variant_cost(folder: str, family, r: dict) -> tuple[float, tuple[int, int, int]]:
    """FLOPs of one variant (every window of a long video) and the shape of its largest window."""
    params = sampling_params(r)
    cfg = family.negative_pass(params)
    if family.extends and r.get("base_num_frames"):
        windows = windows_for(r["num_frames"], r["base_num_frames"], r.get("overlap_history"), None,
                              family.temporal_stride)
        frames = [family.temporal_stride * (length - 1) + 1 for length, _, _ in windows]
    else:
        frames = [r["num_frames"]]
    cost = sum(window_flops(folder, (r["height"], r["width"], f), params.num_inference_steps, cfg) for f in frames)
    return cost, (r["height"], r["width"], max(frames))


def plan_job(spec: JobSpec, gpu: str | None, gpus: int = 1, mfu: float = DEFAULT_MFU, state=None) -> GpuPlan:
    """The plan of the variants still to make (`state`: the library's, as a run plans them; None: all of them)."""
    from stages.models.memory_plan import fits

    m = spec.model
    plan = GpuPlan(gpu, gpus, mfu, f"{m.family} {m.path} ({m.dtype})")
    family = spec.family
    if not family.transformer_class:
        plan.notes.append(f"family '{family.name}' runs no model: nothing to plan")
        return plan
    folder = config_folder(m.path, m.revision)
    if folder is None:
        plan.notes.append(f"{m.path}: its config files are not on this machine (a local folder, a builtin, a hub "
                          "snapshot in the cache, or a hub id while the hub can be reached): no memory or FLOPs plan")
        return plan
    planner = Planner(spec, state)
    for batch in planner.batches():
        plan.invalid += batch.invalid
        for r in batch.todo:
            cost, shape = variant_cost(str(folder), family, r)
            plan.flops += cost
            plan.variants += 1
            if plan.largest is None or math.prod(shape) > math.prod(plan.largest):
                plan.largest = shape
    if gpu is None or plan.largest is None:
        if gpu is None:
            plan.notes.append("no GPU given (--gpu) and none found on a cluster: memory not checked")
        return plan
    # auto (both): the decoder beside the sampler on each GPU (pipeline/capacity.py run_together, or half each on one)
    asked = spec.sample.resources.num_gpus
    share = asked < 1 if asked != "auto" else spec.decode.resources.num_gpus == "auto" or gpus < 2
    verdict = fits(folder, gpu, plan.largest, dtype=m.dtype, vae_dtype=family.vae_dtype_for(m.dtype),
                   share_gpu=share)
    applied = {"fp8": spec.sample.fp8_storage, "tiling": spec.decode.tiling == "on",
               "offload_text_encoder": spec.sample.offload_text_encoder, "one_expert": False}
    for stage, v in (("sample", verdict["sampler"]), ("decode", verdict["decoder"])):
        plan.stages.append(stage_verdict(stage, v, applied, verdict["budget_gib"]))
    return plan


def stage_verdict(stage: str, v: dict, applied: dict, budget: float) -> dict:
    """What the stage needs with the options the job sets, and the cheapest set that fits when that does not."""
    needs = v["needs_gib"]
    options = {k: [] if k == "none" else k.split("+") for k in needs}
    mine = max((k for k, opts in options.items() if all(applied.get(o) for o in opts)), key=lambda k: len(options[k]))
    fix = next((k for k, g in needs.items() if g <= budget), None)
    if fix is None:
        advice = "nothing makes it fit this GPU: a GPU with more memory, or a smaller shape"
    else:
        keys = [FIX_KEYS[o] or f"{o} (not available in Rushes yet)" for o in options[fix]]
        advice = f"it fits with {' and '.join(keys)} ({needs[fix]:.1f} GiB)"
    detail = ", ".join(f"{k}: {g:.1f}" for k, g in needs.items())
    return dict(stage=stage, needs_gib=needs[mine], budget_gib=budget, fits=needs[mine] <= budget, detail=detail,
                advice=advice)
