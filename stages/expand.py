"""Prompt expansion ("recaptioning").

- `plan(row, variants)`, in the driver while planning: with `mode: template` or `none` it writes each variant's
  `expanded_prompt` there (pure Python, stages/models/template.py: it never contradicts its prompt). With
  `mode: llm` the prompt is rewritten later, on Ray, and `params_hash` covers the original prompt and the
  rewriter's identity (`ExpandOptions.pixel_settings`): a re-run decides skip or regenerate without a model.
- `__call__(rows)`, on Ray (`mode: llm`; an actor pool before sampling): rewrites each pending variant with no
  `expanded_prompt` yet, through the backend (`local`, `openai`; `vllm` runs in Ray Data's own LLM processor,
  `llm_processor()`), and records `expanded_prompt`, `expand_model`, `expand_seconds`, token counts and, when
  the original had to be kept, `expand_error`.
- A row with an image: a model that takes images is shown it, fitted as the video will see it, and told to
  describe motion and camera, not what the image fixes; a text-only model is told so without it. `expand_image`
  (planned) records which (stages/models/vision_language.py).
"""
from __future__ import annotations

import os
import time
from typing import Any, Literal

from pydantic import Field, model_validator

from stages.contract import ContractError, LanguageModelProcessor, Resources, Stage, StageOptions
from stages.media.conditioning import IMAGE_COLUMNS, InputError, Target, load
from stages.models.devices import auto_dtype, pick_device, use_threads
from stages.models.template import storyboard, template
from stages.models.rewriters import (SYSTEM_PROMPTS, EndpointRewriter, ExpandExample, LocalRewriter, PromptFile,
                                     Rewrite, check_rewrite, image_status, llm_weights_hash, messages_for,
                                     rewrite_groups, rewrite_storyboards, row_instructions, vllm_config,
                                     vllm_model_source, word_count)
from stages.models.vision_language import as_parts

class ExpandOptions(StageOptions):
    """`mode: llm` runs as an actor pool before sampling, with its own batch size and resources."""

    mode: Literal["template", "none", "llm"] = Field("template", description="template: words added in the driver; none: the prompt as written; llm: a language model rewrites it on Ray")
    styles: list[str] = Field(default_factory=list, description="template: styles to draw from; empty = built-in")
    backend: Literal["local", "openai", "vllm"] = Field("local", description="llm: local (a transformers model on the stage's GPU), openai (an OpenAI-compatible endpoint), vllm (Ray Data's LLM processor)")
    model: str | None = Field(None, description="llm: builtin:tiny-qwen, a folder, hub id or s3:// URI (local, vllm), "
                                                "or the endpoint's model name (openai)")
    revision: str | None = Field(None, description="the hub revision of expand.model")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="the language model's dtype (local, vllm); auto: bfloat16 for a real model on a GPU, else "
                            "float32")
    url: str | None = Field(None, description="openai: the endpoint, e.g. http://vllm:8000/v1")
    api_key_env: str | None = Field(None, description="openai: the environment variable holding the API key")
    language: Literal["en", "zh"] = Field("en", description="the language of the rewritten prompt")
    system_prompt: str | PromptFile | None = Field(
        None, description="instructions, inline or {file: PATH}; unset = the built-in ones for `language`")
    examples: list[ExpandExample] = Field(default_factory=list, description="few-shot (prompt, rewrite) pairs")
    per_variant: bool = Field(True, description="rewrite each variant with its own seed; false: one per row")
    on_error: Literal["fallback", "fail"] = Field(
        "fallback", description="a rewrite that cannot be used: keep the original prompt, or fail the variant")
    temperature: float = Field(0.7, ge=0, le=2, description="sampling temperature of the rewrite")
    top_p: float = Field(0.9, gt=0, le=1, description="nucleus sampling of the rewrite")
    max_new_tokens: int = Field(256, ge=8, le=4096, description="a rewrite cut at this many tokens is refused")
    max_words: int = Field(160, ge=10, description="a longer rewrite is refused (the original is kept)")
    keep_over_words: int = Field(120, ge=1, description="a prompt this long is detailed already: not rewritten")
    timeout_s: float = Field(60.0, gt=0, description="openai: seconds per request")
    max_retries: int = Field(4, ge=0, le=20, description="openai: retries of a 429, 5xx or connection error")
    concurrency: int = Field(8, ge=1, le=256, description="openai: requests in flight per replica")
    batch_size: int = Field(8, ge=1, description="prompts per call of the rewriter")
    sees_images: bool | None = Field(None, description="openai: the endpoint serves a vision-language model, so a "
                                     "row's image goes with its prompt; null: text only. local: read from the model's config")
    image_prompt: str | None = Field(None, description="what the instructions add for a row with an image; unset = the "
                                     "built-in ones for `language` (describe motion and camera, not what the image fixes)")

    @classmethod
    def resource_defaults(cls, data: dict) -> dict:
        local = data.get("mode") == "llm" and data.get("backend", "local") in ("local", "vllm")
        return {"num_gpus": "auto"} if local else {}

    @model_validator(mode="after")
    def _backend_settings(self) -> "ExpandOptions":
        if isinstance(self.system_prompt, PromptFile):  # the text travels to the workers, not the path
            self.__dict__["system_prompt"] = self.system_prompt.text()
        if self.mode != "llm":
            return self
        if not self.model:
            raise ValueError("mode llm needs expand.model (builtin:tiny-qwen, a folder, a hub id, or the "
                             "endpoint's model name)")
        if self.backend == "openai" and not self.url:
            raise ValueError("backend openai needs expand.url (e.g. http://127.0.0.1:8000/v1)")
        if self.backend != "openai" and (self.url or self.api_key_env or self.sees_images is not None):
            raise ValueError(f"expand.url, api_key_env and sees_images are for backend openai, not {self.backend}")
        return self

    def resolved(self, path: str, family) -> "ExpandOptions":
        if self.dtype != "auto":  # bfloat16 for a real model on a GPU (stages/models/devices.py)
            return self
        on_gpu = self.mode == "llm" and self.backend != "openai" and self.resources.wants_gpu
        return self.model_copy(update={"dtype": auto_dtype(self.model or "builtin:", on_gpu)})

    def check_row(self, row: dict) -> str | None:
        # storyboards: the template and the llm stage rewrite their shots; Ray Data's vLLM processor does not yet
        if row.get("shots") and self.mode == "llm" and self.backend == "vllm":
            return ("shots: expand.backend vllm does not rewrite a storyboard's shots yet; use the local or openai "
                    "backend, or mode template")
        return None

    def instructions(self) -> str:
        return self.system_prompt or SYSTEM_PROMPTS[self.language]

    def rewriter_name(self) -> str:
        return {"template": "template", "none": "none"}.get(self.mode) or f"{self.backend}:{self.model}"

    def pixel_settings(self) -> dict[str, Any]:
        """With `mode: llm`, who rewrites and how: the rewritten text is not known when planning."""
        if self.mode != "llm":
            return {}
        identity = {"backend": self.backend, "model": self.model, "revision": self.revision,
                    "system_prompt": self.instructions(), "examples": [e.model_dump() for e in self.examples],
                    "temperature": self.temperature, "top_p": self.top_p, "max_new_tokens": self.max_new_tokens,
                    "max_words": self.max_words, "keep_over_words": self.keep_over_words,
                    "per_variant": self.per_variant}
        identity.update({k: v for k, v in (("sees_images", self.sees_images), ("image_prompt", self.image_prompt))
                         if v is not None})  # set only: older libraries keep their params_hash
        if self.backend != "openai":  # an endpoint's weights are not ours to see: its model name stands for them
            identity.update(dtype=self.dtype,
                            weights_hash=llm_weights_hash(self.model, self.revision, self._storage_options))
        return {"expand": identity}


class ExpandStage(Stage):
    name = "expand"
    Options = ExpandOptions
    writes = ("expanded_prompt", "expand_error", "expand_seconds", "expand_input_tokens", "expand_output_tokens")

    def __init__(self, options=None, ctx=None):
        super().__init__(options, ctx)
        self.rewriter = None
        self.calls = 0  # rewriter calls, for tests

    @property
    def holds_model(self) -> bool:
        return self.options.mode == "llm"

    @property
    def on_ray(self) -> bool:
        """Only the language model runs on Ray; the template ran while planning. `vllm` is Ray Data's own
        processor, which pipeline/graph.py puts in this stage's place."""
        return self.options.mode == "llm"

    # ---- in the driver, while planning -----------------------------------------------------------------

    def template(self, prompt: str, seed: int, style: str | None) -> tuple[str, str | None]:
        """(expanded prompt, why the template did not apply, if it did not)."""
        if self.options.mode == "none":
            return prompt, None
        return template(prompt, seed, style, self.options.styles)

    def storyboard(self, prompt: str, shots: list[dict], seed: int, style: str | None) -> list[dict]:
        return storyboard(prompt, shots, lambda text: self.template(text, seed, style)[0])

    def plan(self, row: dict, variants: list[dict]) -> None:
        """The variants of one manifest row, as planned: who rewrites them, and with `mode: template` or `none`
        their expanded prompt (and a storyboard's shots'), written here in the driver. With `mode: llm` the
        prompt is left for the rewrite on Ray."""
        llm = self.options.mode == "llm"
        for v in variants:
            start = time.perf_counter()
            v.update(expand_model=self.options.rewriter_name(), expand_image=image_status(self.options, v),
                     expand_seed=(v["seed"] if self.options.per_variant else row["seed"]) if llm else None)
            if llm:
                v.update(expanded_prompt=None, expand_error=None)
            else:
                v["expanded_prompt"], v["expand_error"] = self.template(row["prompt"], v["seed"], v.get("style"))
                if v.get("shots"):
                    v["shots"] = self.storyboard(row["prompt"], v["shots"], v["seed"], v.get("style"))
                v["stage_seconds"]["expand"] = time.perf_counter() - start
            v["expand_seconds"] = v["stage_seconds"].get("expand")

    # ---- on Ray, with mode llm ---------------------------------------------------------------------------

    def llm_processor(self, resources: Resources) -> LanguageModelProcessor | None:
        """`backend: vllm`: the rewrites run in Ray Data's LLM processor; this stage still decides what to rewrite
        (`request`) and judges each answer (`finish`)."""
        o = self.options
        if not (o.mode == "llm" and o.backend == "vllm"):
            return None
        if not resources.num_gpus:
            raise ContractError("expand: backend vllm needs GPUs, and expand.resources.num_gpus is 0 on this cluster")
        lo, hi = resources.replica_range
        config = vllm_config(vllm_model_source(o.model), o.dtype, o.revision, o.batch_size, resources.num_gpus,
                             resources.num_cpus, lo if lo == hi else (lo, hi))

        def request(r: dict) -> dict | None:
            if not self.to_rewrite(r) or self.keep_as_is(r):
                return None
            return {"messages": self.chat(r["prompt"], r.get("style"), row_instructions(self.options, r)),
                    "sampling_params": {"temperature": o.temperature, "top_p": o.top_p, "seed": r.get("expand_seed"),
                                        "max_tokens": o.max_new_tokens}}

        def answer(r: dict, a: dict) -> None:  # a failed request: its error, with the rewrite left empty
            finished = a["output_tokens"] < o.max_new_tokens
            rewrite = Rewrite(a["text"], finished, a["input_tokens"], a["output_tokens"], error=a.get("error"))
            self.finish(r, rewrite, a["seconds"])

        return LanguageModelProcessor(config, request, answer)

    def setup(self) -> None:
        o = self.options
        if o.backend == "local":
            use_threads(o.resources.num_cpus)
            device = pick_device(o.resources.num_gpus)
            dtype = auto_dtype(o.model, device == "cuda") if o.dtype == "auto" else o.dtype  # used on its own
            self.rewriter = LocalRewriter(o.model, dtype, device, o.revision, self.ctx.storage_options)
        elif o.backend == "openai":
            key = os.environ.get(o.api_key_env) if o.api_key_env else None
            if o.api_key_env and not key:
                raise RuntimeError(f"expand.api_key_env: the environment variable {o.api_key_env} is not set on "
                                   "this worker")
            self.rewriter = EndpointRewriter(o.url, o.model, key, o.timeout_s, o.max_retries, o.concurrency)
        else:
            raise RuntimeError("backend vllm runs as Ray Data's LLM processor (llm_processor), not as this stage")

    def chat(self, prompt: str, style: str | None = None, instructions: str | None = None) -> list[dict]:
        asked = f"{prompt}\nStyle: {style}" if style else prompt
        return messages_for(asked, instructions or self.options.instructions(),
                            [(e.prompt, e.rewrite) for e in self.options.examples])

    def pictures(self, r: dict) -> list:
        """The row's images, read again by URI (checked against their planned hash) and fitted to its size."""
        fit = Target(r["width"], r["height"], r.get("conditioning_resize") or "crop")
        return [load(c, r[c], r[f"{c}_sha256"], fit, self.ctx.storage_options) for c in IMAGE_COLUMNS if r.get(c)]

    def to_rewrite(self, r: dict) -> bool:
        return r["status"] == "pending" and r.get("expanded_prompt") is None

    def keep_as_is(self, r: dict) -> bool:
        """A prompt that is already detailed is not rewritten (its own words are the best caption)."""
        words = word_count(r["prompt"])
        if words < self.options.keep_over_words:
            return False
        r.update(expanded_prompt=r["prompt"], expand_input_tokens=None, expand_output_tokens=None,
                 expand_error=f"kept as it is: already {words} words (expand.keep_over_words="
                              f"{self.options.keep_over_words})")
        return True

    def finish(self, r: dict, rewrite, seconds: float) -> None:
        """Accept a rewrite, or record why the original prompt is kept (or the variant failed)."""
        o = self.options
        text, why = check_rewrite(rewrite, row_instructions(self.options, r), o.max_words, o.max_new_tokens)
        r.update(expand_input_tokens=rewrite.input_tokens, expand_output_tokens=rewrite.output_tokens, expand_seconds=seconds)
        r["stage_seconds"]["expand"] = seconds
        if why is None:
            r.update(expanded_prompt=text, expand_error=None)
        elif o.on_error == "fail":
            r.update(expanded_prompt=None, expand_error=why, status="failed",
                     error=f"expand: {why} (expand.on_error=fail)")
        else:
            r.update(expanded_prompt=r["prompt"], expand_error=f"{why}; the original prompt is used")

    def __call__(self, rows: list[dict]) -> list[dict]:
        o = self.options
        rewrite_storyboards(self.rewriter, rows, self.chat, o)
        todo = [r for r in rows if self.to_rewrite(r) and not self.keep_as_is(r)]
        unique = rewrite_groups(todo)  # per_variant false: variants of one row share a rewrite (one call)
        chats, images = {}, {}
        for key, group in unique.items():
            try:
                images[key] = self.pictures(group[0]) if group[0].get("expand_image") == "shown" else []
            except InputError as e:  # the file changed since planning: the next run plans it anew
                for r in group:
                    r.update(status="failed", error=f"expand: {e}")
                continue
            chat = self.chat(key[0], key[1], row_instructions(o, group[0]))
            parts = images[key] if o.backend == "openai" else getattr(self.rewriter, "sees_images", False)
            chats[key] = as_parts(chat, images[key], o.backend) if parts else chat  # a VLM's template reads parts
        if not chats:
            return rows
        start = time.perf_counter()
        self.calls += 1
        results = self.rewriter.rewrite(list(chats.values()), [k[2] for k in chats], o.temperature, o.top_p,
                                        o.max_new_tokens, images=[images[k] for k in chats])
        seconds = (time.perf_counter() - start) / len(chats)
        for key, rewrite in zip(chats, results):
            for r in unique[key]:
                self.finish(r, rewrite, seconds)
        return rows
