"""A variant's fields, defined once.

Every list that names a variant's fields is derived from `FIELDS` below: the record schema of the
library, the manifest columns a row may override (with their kinds and bounds), the fields that go
into `params_hash`, the shape-bucket key that sampling batches on, the fields a retried variant
carries over, and the columns the library state reads back. Adding a per-variant setting is one line
here (plus its job-file default in `SamplingSpec` when a row may override it).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

import pyarrow as pa

FLOAT_MAP = pa.map_(pa.string(), pa.float64())
# When a model stage ran the variant's batch (epoch seconds), on which worker (node/GPU ids, or node/pid without a
# GPU) and with what share of a GPU: stamped by the pipeline for each model stage (pipeline/ledger.py).
SPAN = pa.struct([("stage", pa.string()), ("start", pa.float64()), ("end", pa.float64()), ("worker", pa.string()),
                  ("gpus", pa.float64())])
SHOT = pa.struct([("prompt", pa.string()), ("duration_s", pa.float64()), ("expanded_prompt", pa.string()),
                  ("first_frame", pa.int32()), ("end_frame", pa.int32())])


@dataclass(frozen=True)
class VariantField:
    name: str
    type: pa.DataType
    override: str | None = None  # a manifest column of this kind may set it per row: int, float, string,
    #   list<string>, shots
    bounds: tuple | None = None  # inclusive (low, high) for a numeric override
    pixels: bool = False  # decides the pixels: part of params_hash
    bucket: bool = False  # variants sampled in one pipeline call must agree on it
    planned: bool = False  # decided when planning (not a result): a retried variant keeps it
    state: bool = False  # read back into the library state that a re-run compares against
    hash_if_set: bool = False  # in params_hash only when not None (added later: older hashes stay valid)
    report: bool = False  # shown on the report's cards (pipeline/report.py)
    job: tuple | None = None  # a job-file `sampling:` key: (its default[, its description]); rows override it


V = VariantField
FIELDS = [
    V("run_id", pa.string(), report=True),
    V("id", pa.string(), planned=True, state=True, report=True),
    V("variant", pa.int32(), planned=True, state=True, report=True),
    V("row", pa.int64(), planned=True, state=True),
    V("status", pa.string(), state=True, report=True),
    V("error", pa.string(), state=True, report=True),
    V("reasons", pa.list_(pa.string()), report=True),
    V("prompt", pa.string(), planned=True, report=True),
    V("expanded_prompt", pa.string(), pixels=True, planned=True, report=True),
    # who rewrote the prompt, and how it went (stages/expand.py); planned: a retried variant keeps its rewrite
    V("expand_model", pa.string(), planned=True, report=True), V("expand_seed", pa.int64(), planned=True),
    V("expand_error", pa.string(), planned=True, report=True), V("expand_seconds", pa.float64(), planned=True),
    V("expand_input_tokens", pa.int32(), planned=True), V("expand_output_tokens", pa.int32(), planned=True),
    # a row with an image rewritten by a language model: "shown" (a vision-language model saw it) or why it was not
    # (a text-only model); None for other rows
    V("expand_image", pa.string(), pixels=True, planned=True, hash_if_set=True, report=True),
    # what the text encoder read of expanded_prompt (stages/sample.py): its length in tokens, and whether it was cut
    V("prompt_tokens", pa.int32(), report=True), V("truncated", pa.bool_(), report=True),
    V("negative_prompt", pa.string(), override="string", pixels=True, planned=True,
      job=('', "what the video should not show (families that run classifier-free guidance)")),
    V("seed", pa.int64(), override="int", bounds=(0, 2**31 - 1), pixels=True, report=True,
      job=(0, 'base seed for rows that give none')),
    V("height", pa.int32(), override="int", bounds=(16, 4096), pixels=True, bucket=True, planned=True,
      job=(None, "pixels (null: the family's recommendation for the model)")),
    V("width", pa.int32(), override="int", bounds=(16, 4096), pixels=True, bucket=True, planned=True,
      job=(None, "pixels (null: the family's recommendation)")),
    # up to 20,000: a long row (stages/long_video/windows.py) is extended window by window; 60 s at 24 fps is 1441
    V("num_frames", pa.int32(), override="int", bounds=(1, 20_000), pixels=True, bucket=True, planned=True,
      job=(None, "frames, on the family's rule (4k+1, LTX 8k+1); longer than one window: a long video")),
    V("fps", pa.int32(), override="int", bounds=(1, 120), pixels=True, bucket=True, planned=True,
      job=(None, "frames per second of the video (LTX also conditions on it)")),  # LTX reads it
    V("num_inference_steps", pa.int32(), override="int", bounds=(1, 1000), pixels=True, bucket=True,
      planned=True,
      job=(None, "denoising steps")),
    V("guidance_scale", pa.float64(), override="float", bounds=(0.0, 100.0), pixels=True, bucket=True,
      planned=True,
      job=(None, "classifier-free guidance (HunyuanVideo: the embedded guidance)")),
    # Wan2.2 A14B's low-noise expert's guidance; the scheduler's flow shift (None: the checkpoint's own)
    V("guidance_scale_2", pa.float64(), override="float", bounds=(0.0, 100.0), pixels=True, bucket=True,
      planned=True, hash_if_set=True,
      job=(None, 'Wan2.2 A14B: guidance of the low-noise expert')),
    V("flow_shift", pa.float64(), override="float", bounds=(0.0, 100.0), pixels=True, bucket=True, planned=True,
      hash_if_set=True,
      job=(None, "the scheduler's shift (None: the family's or checkpoint's)")),
    # HunyuanVideo's true classifier-free guidance (a negative pass); its guidance_scale is embedded
    V("true_cfg_scale", pa.float64(), override="float", bounds=(0.0, 100.0), pixels=True, bucket=True,
      planned=True, hash_if_set=True,
      job=(None, 'HunyuanVideo: true classifier-free guidance with the negative prompt, a second pass per step (above 1; its guidance_scale is embedded)')),
    # long videos by diffusion forcing (stages/long_video/, stages/models/families/skyreels_df.py): the window,
    # the frames each window continues from, the noise added to them, and the asynchronous schedule; unset elsewhere
    V("base_num_frames", pa.int32(), override="int", bounds=(1, 1024), pixels=True, bucket=True, planned=True,
      hash_if_set=True,
      job=(None, 'frames one window makes (SkyReels-V2-DF: 97 at 540P, 121 at 720P)')),
    V("overlap_history", pa.int32(), override="int", bounds=(1, 1024), pixels=True, bucket=True, planned=True,
      hash_if_set=True,
      job=(None, 'frames each window continues from (17 or 37)')),
    V("addnoise_condition", pa.float64(), override="float", bounds=(0.0, 1000.0), pixels=True, bucket=True,
      planned=True, hash_if_set=True,
      job=(None, 'noise added to those frames (about 20)')),
    V("ar_step", pa.int32(), override="int", bounds=(0, 1000), pixels=True, bucket=True, planned=True,
      hash_if_set=True,
      job=(None, '0: synchronous; 5: asynchronous (with causal_block_size 5)')),
    V("causal_block_size", pa.int32(), override="int", bounds=(1, 64), pixels=True, bucket=True, planned=True,
      hash_if_set=True,
      job=(None, 'latent frames per causal block (ar_step > 0)')),
    # a storyboard (stages/long_video/): its shots in order, each {prompt, duration_s} in the manifest; planning
    # adds each one's expanded prompt and frame range [first_frame, end_frame)
    V("shots", pa.list_(SHOT), override="shots", pixels=True, planned=True, hash_if_set=True, report=True),
    # conditioning inputs (stages/media/conditioning.py): each a URI in the manifest (the record keeps it as read),
    # the sha256 of its bytes (params_hash: a changed image regenerates its row, a moved one does not), and how it
    # meets the video's size and how strongly it holds; all unset for a text-only row
    V("image", pa.string(), override="uri", planned=True, report=True),
    V("image_sha256", pa.string(), pixels=True, planned=True, hash_if_set=True),
    V("last_image", pa.string(), override="uri", planned=True, report=True),
    V("last_image_sha256", pa.string(), pixels=True, planned=True, hash_if_set=True),
    V("video", pa.string(), override="uri", planned=True, report=True),
    V("video_sha256", pa.string(), pixels=True, planned=True, hash_if_set=True),
    V("video_frames", pa.int32(), planned=True),  # the clip's frames, counted while planning
    V("conditioning_resize", pa.string(), pixels=True, planned=True, hash_if_set=True),
    V("conditioning_strength", pa.float64(), pixels=True, planned=True, hash_if_set=True),
    V("num_variants", None, override="int", bounds=(1, 64),
      job=(1, 'variants of each row (each its own seed)')),  # a row's setting: no variant has it
    V("style", pa.string(), override="string", planned=True, report=True),
    # the cell of the job's variant matrix (pipeline/spec.py VariantMatrix) that made the variant, if any
    V("aspect_ratio", pa.string(), planned=True, report=True), V("seed_index", pa.int32(), planned=True, report=True),
    V("tags", pa.list_(pa.string()), override="list<string>", planned=True, report=True),
    V("model_family", pa.string()), V("model_path", pa.string()), V("model_revision", pa.string()),
    V("model_dtype", pa.string()), V("model_weights_hash", pa.string()),
    # the VAE as the decode stage ran it (stages/decode.py): its dtype, and whether it decoded in tiles
    V("vae_dtype", pa.string()), V("vae_tiling", pa.bool_()),
    V("gpu_peak_gib", FLOAT_MAP),  # the most GPU memory each model stage held for it (CUDA only)
    V("params_hash", pa.string(), planned=True, state=True),
    V("video_uri", pa.string(), report=True), V("poster_uri", pa.string(), report=True),
    V("preview_uri", pa.string(), report=True),
    # each conditioning input as the video saw it (fitted to its size), a small JPEG beside the video for the report
    V("image_preview_uri", pa.string(), report=True), V("last_image_preview_uri", pa.string(), report=True),
    V("video_preview_uri", pa.string(), report=True),  # the last frame of the clip it continues
    V("bytes", pa.int64()), V("sha256", pa.string()),
    # as a manifest column: the length asked for, turned into num_frames when planning; in a record: the video's
    V("duration_s", pa.float64(), override="float", bounds=(0.001, 3600.0), report=True,
      job=(None, "the length instead of num_frames: the fewest frames on the family's rule that hold it (60 s at 24 fps: 1441)")),
    V("resolution", pa.string(), report=True), V("codec", pa.string()),
    V("metrics", FLOAT_MAP, report=True), V("phash", pa.string(), state=True),
    V("stage_seconds", FLOAT_MAP, report=True),
    V("spans", pa.list_(SPAN)),  # the model stages' batches that made it (pipeline/gpu_time.py reads them)
    V("attempt", pa.int32()), V("attempts", pa.list_(pa.string())),
    V("manifest", pa.string()), V("committed_at", pa.timestamp("us", tz="UTC"), state=True, report=True),
]
del V

RECORD_SCHEMA = pa.schema([(f.name, f.type) for f in FIELDS if f.type is not None])
OVERRIDES = {f.name: f.override for f in FIELDS if f.override}
BOUNDS = {f.name: f.bounds for f in FIELDS if f.bounds}
PIXEL_FIELDS = tuple(f.name for f in FIELDS if f.pixels)
HASH_IF_SET = frozenset(f.name for f in FIELDS if f.hash_if_set)
BUCKET_FIELDS = tuple(f.name for f in FIELDS if f.bucket)
PLANNED_FIELDS = tuple(f.name for f in FIELDS if f.planned) + ("extra",)  # extra: the manifest's own columns
STATE_COLUMNS = tuple(f.name for f in FIELDS if f.state)
# What a planned variant carries before any stage has run (the stages' row contract starts from it): its record's
# fields, the manifest's own columns, and the seconds each stage takes.
PLANNED_KEYS = (*RECORD_SCHEMA.names, "extra", "stage_seconds")
REPORT_COLUMNS = tuple(f.name for f in FIELDS if f.report)
STATUSES = ("accepted", "rejected", "invalid", "failed")  # every record ends in one of these
DONE = ("accepted", "rejected")  # a video was made and judged: a re-run with the same params_hash skips it
WORK = ("new", "skipped", "retried", "regenerated")  # what planning decides for each variant

# The settings one pipeline call shares (a shape bucket), as one record: what a family samples with.
SamplingParams = dataclasses.make_dataclass(
    "SamplingParams", [(name, object, dataclasses.field(default=None)) for name in BUCKET_FIELDS], frozen=True)
SamplingParams.__doc__ = "A bucket's sampling settings: the variant fields marked `bucket` above, by name."


def sampling_params(row: dict) -> SamplingParams:
    return SamplingParams(**{k: row.get(k) for k in BUCKET_FIELDS})


def params_hash(settings: dict, variant: dict) -> str:
    """sha256 of the canonical JSON of everything that decides a variant's pixels: the run's pixel
    settings (model identity, encoder settings, ...) and the variant's own PIXEL_FIELDS."""
    params = {**settings, **{k: variant[k] for k in PIXEL_FIELDS if k not in HASH_IF_SET},
              **{k: variant[k] for k in HASH_IF_SET if variant.get(k) is not None}}
    if variant["expanded_prompt"] is None:  # rewritten later (expand.mode llm): the original prompt and the
        params["prompt"] = variant["prompt"]  # style the rewriter is asked for decide it, with the rewriter's
        params["style"] = variant.get("style")  # identity in `settings`
    blob = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def variants_of(row: dict, cells: list[dict] | None) -> list[dict]:
    """One row per variant of a valid manifest row: `num_variants` of them, or one per cell of the job's variant
    matrix (`cells`: style, aspect_ratio, seed_index, height, width; None = the row's own), where cells with the
    same seed index share a seed, so that they differ only by their style and shape."""
    out = []
    for variant, cell in enumerate(cells or [{"seed_index": i} for i in range(row["num_variants"])]):
        v = {k: val for k, val in row.items() if k != "num_variants"}
        v.update({k: val for k, val in cell.items() if val is not None})
        v.setdefault("aspect_ratio", None)
        if cells is None:
            v["seed_index"] = None
        v.update(variant=variant, seed=(row["seed"] + cell["seed_index"]) % 2**31, status="pending", error=None,
                 reasons=[], metrics={}, stage_seconds={})
        out.append(v)
    return out
