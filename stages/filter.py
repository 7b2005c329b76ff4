"""Quality filtering: decoded frames to metrics, a perceptual hash, and an accept/reject verdict.

In: rows carrying `frames`. Out: the same rows with
- `metrics`: str -> float, every metric of stages/media/quality.py (plus `clip_score` when a CLIP model is
  configured, stages/models/clip_score.py), recorded whatever the verdict;
- `phash`: the clip's perceptual hash (stages/media/quality.py `clip_phash`);
- `reasons`: one line per failed check, starting with its verdict word ("frozen: ...");
- `status`: "accepted" or "rejected".

A threshold of `null` in the job file, or a metric named in `filter.score_only`, records the metric
without ever rejecting. With `clip_model` set the stage holds a model, so it runs as an actor pool (on
the GPU it asks for); without, it is plain image statistics in tasks.
"""
from __future__ import annotations

import time

from pydantic import Field, field_validator, model_validator

from stages.contract import Stage, StageOptions
from stages.models.devices import pick_device, use_threads
from stages.long_video.stream import segment_prompt, stream_metrics
from stages.media.quality import as_uint8, frame_metrics
from stages.models.clip_score import BUILTIN_CLIPS, ClipScorer

# (metric, FilterOptions field, "<" rejects below / ">" rejects above, verdict word). One metric may
# have two checks (motion: frozen and chaotic); `score_only` names metrics.
CHECKS = [
    ("nonfinite_fraction", None, ">", "nan"),
    ("black_fraction", "max_black_fraction", ">", "black"),
    ("constant_fraction", "max_constant_fraction", ">", "constant"),
    ("motion", "min_motion", "<", "frozen"),
    ("motion", "max_motion", ">", "chaotic"),
    ("flow_residual", "max_flow_residual", ">", "chaotic"),
    ("flicker", "max_flicker", ">", "flicker"),
    ("scene_cuts", "max_scene_cuts", ">", "scene cut"),
    ("sharpness", "min_sharpness", "<", "blurry"),
    ("brightness", "min_brightness", "<", "too dark"),
    ("clipped_low", "max_clipped_low", ">", "too dark"),
    ("brightness", "max_brightness", ">", "overexposed"),
    ("clipped_high", "max_clipped_high", ">", "overexposed"),
    ("contrast", "min_contrast", "<", "low contrast"),
    ("clip_score", "min_clip_score", "<", "clip score"),
]
# `duplicate` is decided in the driver across the library (pipeline/curate.py), not here.
SCORE_ONLY_NAMES = sorted({c[0] for c in CHECKS} | {"duplicate"})




class FilterOptions(StageOptions):
    """Quality thresholds. Every metric is recorded on every record; a threshold of `null`, or a metric
    named in `score_only`, records it without ever rejecting. Luma is 0..255."""

    black_luma: float = Field(8.0, ge=0, le=255, description="a frame darker than this mean luma is black")
    max_black_fraction: float | None = Field(0.5, ge=0, le=1, description="share of black frames")
    max_constant_fraction: float | None = Field(0.5, ge=0, le=1, description="share of one-colour frames")
    min_motion: float | None = Field(
        0.2, ge=0, description="fastest 1% of the flow, % of frame width per frame; below = frozen")
    max_motion: float | None = Field(None, gt=0, description="optical flow above this = chaotic")
    max_flow_residual: float | None = Field(
        20.0, gt=0, description="luma change the flow cannot explain; above = chaotic")
    max_flicker: float | None = Field(15.0, gt=0, description="mean unexplained brightness jump, luma levels")
    max_scene_cuts: int | None = Field(0, ge=0, description="hard cuts allowed in one clip")
    min_sharpness: float | None = Field(None, ge=0, description="variance of the Laplacian")
    min_brightness: float | None = Field(16.0, ge=0, le=255, description="mean luma")
    max_brightness: float | None = Field(240.0, ge=0, le=255, description="mean luma")
    max_clipped_low: float | None = Field(0.5, ge=0, le=1, description="share of pixels at luma <= 5")
    max_clipped_high: float | None = Field(0.25, ge=0, le=1, description="share of pixels at luma >= 250")
    min_contrast: float | None = Field(4.0, ge=0, description="mean per-frame luma standard deviation")
    clip_model: str | None = Field(
        None, description="CLIP for prompt alignment: builtin:tiny-clip, builtin:toy-clip (trained on the toy "
                          "world), a local folder, a hub id or an fsspec URI (s3://..., copied once per node); null = "
                          "off. A checkpoint with a `rushes_clip.json` is scored on several frames at once: "
                          "`{\"frames\": 4, \"layout\": \"grid\"}` tiles them in one image, `\"layout\": "
                          "\"channels\"` stacks them along the channel axis (a vision tower of 3 x frames channels; "
                          "builtin:toy-clip)")
    min_clip_score: float | None = Field(None, ge=0, le=100, description="100 x cosine(text, frame), mean")
    max_duplicate_distance: int | None = Field(
        24, ge=0, le=256, description="pHash Hamming bits within which two videos are duplicates; null = off")
    retries_on_reject: int = Field(0, ge=0, le=10, description="new seeds to try for a rejected variant")
    score_only: list[str] = Field(default_factory=list, description="metrics recorded but never rejecting")

    @field_validator("score_only")
    @classmethod
    def _known_metrics(cls, v: list[str]) -> list[str]:
        unknown = [name for name in v if name not in SCORE_ONLY_NAMES]
        if unknown:
            raise ValueError(f"unknown metric {', '.join(map(repr, unknown))} "
                             f"(allowed: {', '.join(SCORE_ONLY_NAMES)})")
        return v

    @field_validator("clip_model")
    @classmethod
    def _known_builtin_clip(cls, v: str | None) -> str | None:
        if v and v.startswith("builtin:") and v.removeprefix("builtin:") not in BUILTIN_CLIPS:
            raise ValueError(f"unknown builtin model (known: {', '.join('builtin:' + k for k in BUILTIN_CLIPS)})")
        return v

    @model_validator(mode="after")
    def _clip_threshold_needs_a_model(self) -> "FilterOptions":
        if self.min_clip_score is not None and not self.clip_model:
            raise ValueError("min_clip_score needs filter.clip_model (e.g. builtin:tiny-clip or a CLIP hub id)")
        return self


class FilterStage(Stage):
    name = "filter"
    Options = FilterOptions
    reads = ("frames",)
    writes = ("metrics", "phash", "reasons")

    def __init__(self, options=None, ctx=None):
        super().__init__(options, ctx)
        self.clip = None

    @property
    def holds_model(self) -> bool:
        return bool(self.options.clip_model)

    def setup(self) -> None:
        """Loads the CLIP model, on the GPU the stage asked for, when one is configured."""
        if self.options.clip_model:
            use_threads(self.options.resources.num_cpus)
            self.clip = ClipScorer(self.options.clip_model, pick_device(self.options.resources.num_gpus),
                                   self.ctx.storage_options)

    def verdict(self, m: dict[str, float], num_frames: int, cuts: list[int] = ()) -> list[str]:
        s, reasons = self.options, []
        for metric, field, side, word in CHECKS:
            if metric not in m or metric in s.score_only:
                continue
            if metric in ("motion", "flow_residual") and num_frames < 2:
                continue
            limit = 0.0 if field is None else getattr(s, field)
            value = m[metric]
            if limit is None or not (value < limit if side == "<" else value > limit):
                continue
            named = f"{field} {limit:g}" if field else f"{limit:g}"
            where = f" at frame {', '.join(map(str, cuts))}" if metric == "scene_cuts" else ""
            reasons.append(f"{word}: {metric} {value:.4g} {side} {named}{where}")
        return reasons

    def __call__(self, rows: list[dict]) -> list[dict]:
        for r in rows:
            if r["status"] != "pending":
                continue
            start = time.perf_counter()
            try:
                if r["frames"].streamed:  # a long video, read a segment at a time (stages/long_video/stream.py)
                    frames, nonfinite = None, 0.0
                    # CLIP per segment, against the prompt (a storyboard's: the shot's) it was made from
                    clip = (lambda first, end, chunk, r=r: {"clip_score": self.clip.score(
                        segment_prompt(r, first, end), chunk)}) if self.clip else None
                    metrics, r["phash"], cuts = stream_metrics(r, r["frames"], self.options.black_luma, extra=clip)
                else:
                    frames, nonfinite = as_uint8(r["frames"].array)
                    metrics, r["phash"], cuts = frame_metrics(frames, self.options.black_luma)
                r["metrics"] = {"nonfinite_fraction": nonfinite, **metrics}
                if self.options.clip_model and frames is not None:
                    r["metrics"]["clip_score"] = self.clip.score(r.get("expanded_prompt") or r["prompt"], frames)
            except Exception as e:  # noqa: BLE001 - recorded on the row
                r.update(status="failed", error=f"filter: {type(e).__name__}: {e}")
                continue
            finally:
                r["stage_seconds"]["filter"] = time.perf_counter() - start
            r["reasons"] = self.verdict(r["metrics"], r["num_frames"] if frames is None else len(frames), cuts)
            r["status"] = "rejected" if r["reasons"] else "accepted"
        return rows
