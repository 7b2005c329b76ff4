"""A variant's fields, defined once.

Every list that names a variant's fields is derived from `FIELDS` below: the record schema of the
library, the manifest columns a row may override (with their kinds and bounds), the fields that go
into `params_hash`, the shape-bucket key that sampling batches on, the fields a retried variant
carries over, and the columns the library state reads back. Adding a per-variant setting is one line
here (plus its job-file default in `SamplingSpec` when a row may override it).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import pyarrow as pa

FLOAT_MAP = pa.map_(pa.string(), pa.float64())
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


V = VariantField
FIELDS = [
    V("run_id", pa.string()),
    V("id", pa.string(), planned=True, state=True),
    V("variant", pa.int32(), planned=True, state=True),
    V("row", pa.int64(), planned=True, state=True),
    V("status", pa.string(), state=True),
    V("error", pa.string(), state=True),
    V("reasons", pa.list_(pa.string())),
    V("prompt", pa.string(), planned=True),
    V("expanded_prompt", pa.string(), pixels=True, planned=True),
    # who rewrote the prompt, and how it went (stages/expand.py); planned: a retried variant keeps its rewrite
    V("expand_model", pa.string(), planned=True), V("expand_seed", pa.int64(), planned=True),
    V("expand_error", pa.string(), planned=True), V("expand_seconds", pa.float64(), planned=True),
    V("expand_input_tokens", pa.int32(), planned=True), V("expand_output_tokens", pa.int32(), planned=True),
    # what the text encoder read of expanded_prompt (stages/sample.py): its length in tokens, and whether it was cut
    V("prompt_tokens", pa.int32()), V("truncated", pa.bool_()),
    V("negative_prompt", pa.string(), override="string", pixels=True, planned=True),
    V("seed", pa.int64(), override="int", bounds=(0, 2**31 - 1), pixels=True),
    V("height", pa.int32(), override="int", bounds=(16, 4096), pixels=True, bucket=True, planned=True),
    V("width", pa.int32(), override="int", bounds=(16, 4096), pixels=True, bucket=True, planned=True),
    # up to 20,000: a long row (stages/long_video.py) is extended window by window; 60 s at 24 fps is 1441
    V("num_frames", pa.int32(), override="int", bounds=(1, 20_000), pixels=True, bucket=True, planned=True),
    V("fps", pa.int32(), override="int", bounds=(1, 120), pixels=True, bucket=True, planned=True),  # LTX reads it
    V("num_inference_steps", pa.int32(), override="int", bounds=(1, 1000), pixels=True, bucket=True,
      planned=True),
    V("guidance_scale", pa.float64(), override="float", bounds=(0.0, 100.0), pixels=True, bucket=True,
      planned=True),
    # Wan2.2 A14B's low-noise expert's guidance; the scheduler's flow shift (None: the checkpoint's own)
    V("guidance_scale_2", pa.float64(), override="float", bounds=(0.0, 100.0), pixels=True, bucket=True,
      planned=True, hash_if_set=True),
    V("flow_shift", pa.float64(), override="float", bounds=(0.0, 100.0), pixels=True, bucket=True, planned=True,
      hash_if_set=True),
    # HunyuanVideo's true classifier-free guidance (a negative pass); its guidance_scale is embedded
    V("true_cfg_scale", pa.float64(), override="float", bounds=(0.0, 100.0), pixels=True, bucket=True,
      planned=True, hash_if_set=True),
    # long videos by diffusion forcing (stages/long_video.py, stages/families/skyreels_df.py): the window, the
    # frames each window continues from, the noise added to them, and the asynchronous schedule; unset elsewhere
    V("base_num_frames", pa.int32(), override="int", bounds=(1, 1024), pixels=True, bucket=True, planned=True,
      hash_if_set=True),
    V("overlap_history", pa.int32(), override="int", bounds=(1, 1024), pixels=True, bucket=True, planned=True,
      hash_if_set=True),
    V("addnoise_condition", pa.float64(), override="float", bounds=(0.0, 1000.0), pixels=True, bucket=True,
      planned=True, hash_if_set=True),
    V("ar_step", pa.int32(), override="int", bounds=(0, 1000), pixels=True, bucket=True, planned=True,
      hash_if_set=True),
    V("causal_block_size", pa.int32(), override="int", bounds=(1, 64), pixels=True, bucket=True, planned=True,
      hash_if_set=True),
    # a storyboard (stages/long_video.py): its shots in order, each {prompt, duration_s} in the manifest; planning
    # adds each one's expanded prompt and frame range [first_frame, end_frame)
    V("shots", pa.list_(SHOT), override="shots", pixels=True, planned=True, hash_if_set=True),
    V("num_variants", None, override="int", bounds=(1, 64)),  # a row's setting: no variant has it
    V("style", pa.string(), override="string", planned=True),
    # the cell of the job's variant matrix (pipeline/spec.py VariantMatrix) that made the variant, if any
    V("aspect_ratio", pa.string(), planned=True), V("seed_index", pa.int32(), planned=True),
    V("tags", pa.list_(pa.string()), override="list<string>", planned=True),
    V("model_family", pa.string()), V("model_path", pa.string()), V("model_revision", pa.string()),
    V("model_dtype", pa.string()), V("model_weights_hash", pa.string()),
    V("params_hash", pa.string(), planned=True, state=True),
    V("video_uri", pa.string()), V("poster_uri", pa.string()), V("preview_uri", pa.string()),
    V("bytes", pa.int64()), V("sha256", pa.string()),
    # as a manifest column: the length asked for, turned into num_frames when planning; in a record: the video's
    V("duration_s", pa.float64(), override="float", bounds=(0.001, 3600.0)),
    V("resolution", pa.string()), V("codec", pa.string()),
    V("metrics", FLOAT_MAP), V("phash", pa.string(), state=True), V("stage_seconds", FLOAT_MAP),
    V("attempt", pa.int32()), V("attempts", pa.list_(pa.string())),
    V("manifest", pa.string()), V("committed_at", pa.timestamp("us", tz="UTC"), state=True),
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
STATUSES = ("accepted", "rejected", "invalid", "failed")


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
