"""Prompt expansion ("recaptioning").

- `plan(row, variants)`, in the driver while planning: with `mode: template` or `none` it writes each variant's
  `expanded_prompt` there (pure Python, stages/models/template.py: it never contradicts its prompt). With
  `mode: llm` the prompt is rewritten later, on Ray, and `params_hash` covers the original prompt and the
  rewriter's identity (`ExpandOptions.pixel_settings`): a re-run decides skip or regenerate without a model.
- `__call__(rows)`, on Ray (`mode: llm`; an actor pool before sampling): rewrites each pending variant with no
  `expanded_prompt` yet, through the backend (`local`, `openai`; `vllm` runs in Ray Data's own LLM processor,
  `llm_processor()`), and records `expanded_prompt`, `expand_model`, `expand_seconds`, token counts and, when
  the original had to be kept, `expand_error`.
"""
from __future__ import annotations

import os
import time
from typing import Any, Literal

from pydantic import Field, model_validator

from stages.contract import ContractError, LanguageModelProcessor, Resources, Stage, StageOptions
from stages.models.devices import auto_dtype, pick_device, use_threads
from stages.models.template import storyboard, template
from stages.models.rewriters import (SYSTEM_PROMPTS, EndpointRewriter, ExpandExample, LocalRewriter, PromptFile,
                                     Rewrite, check_rewrite, llm_weights_hash, messages_for, vllm_model_source,
                                     storyboard_request, vllm_config, word_count)

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
        if self.backend != "openai" and (self.url or self.api_key_env):
            raise ValueError(f"expand.url and expand.api_key_env are for backend openai, not {self.backend}")
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
            v.update(expand_model=self.options.rewriter_name(),
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
            return {"messages": self.chat(r["prompt"], r.get("style")),
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

    def chat(self, prompt: str, style: str | None = None) -> list[dict]:
        asked = f"{prompt}\nStyle: {style}" if style else prompt
        return messages_for(asked, self.options.instructions(), [(e.prompt, e.rewrite) for e in self.options.examples])

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
        text, why = check_rewrite(rewrite, o.instructions(), o.max_words, o.max_new_tokens)
        r.update(expand_input_tokens=rewrite.input_tokens, expand_output_tokens=rewrite.output_tokens,
                 expand_seconds=seconds)
        r["stage_seconds"]["expand"] = seconds
        if why is None:
            r.update(expanded_prompt=text, expand_error=None)
        elif o.on_error == "fail":
            r.update(expanded_prompt=None, expand_error=why, status="failed",
                     error=f"expand: {why} (expand.on_error=fail)")
        else:
            r.update(expanded_prompt=r["prompt"], expand_error=f"{why}; the original prompt is used")

    def storyboard_chat(self, r: dict, k: int) -> list[dict]:
        return self.chat(storyboard_request(r["prompt"], r["shots"], k), r.get("style"))

    def rewrite_shots(self, rows: list[dict]) -> None:
        """Every shot of the storyboards in `rows` rewritten by the model (one call for them all); a rewrite that
        fails the guard rails leaves the shot its cast and own words, and the variant's expand_error says so."""
        jobs = [(r, k) for r in rows if r["status"] == "pending" and r.get("shots")
                and any(s.get("expanded_prompt") is None for s in r["shots"]) for k in range(len(r["shots"]))]
        if not jobs:
            return
        o = self.options
        results = self.rewriter.rewrite([self.storyboard_chat(r, k) for r, k in jobs],
                                        [r["expand_seed"] for r, _ in jobs], o.temperature, o.top_p, o.max_new_tokens)
        for r in {id(r): r for r, _ in jobs}.values():
            r["shots"] = [dict(s) for s in r["shots"]]  # variants of one row may share the manifest's list
        for (r, k), rewrite in zip(jobs, results):
            text, why = check_rewrite(rewrite, o.instructions(), o.max_words, o.max_new_tokens)
            shot = r["shots"][k]
            shot["expanded_prompt"] = text or f"{r['prompt'].strip().rstrip('.')}. {shot['prompt'].strip()}"
            if why is not None:
                note = f"shot {k + 1}: {why}; its cast and own words are used"
                r["expand_error"] = f"{r['expand_error']}; {note}" if r.get("expand_error") else note

    def __call__(self, rows: list[dict]) -> list[dict]:
        self.rewrite_shots(rows)
        todo = [r for r in rows if self.to_rewrite(r) and not self.keep_as_is(r)]
        if not todo:
            return rows
        o = self.options
        # per_variant false: variants of one row share the row's rewrite (same seed, one call)
        unique: dict[tuple, list[dict]] = {}
        for r in todo:
            unique.setdefault((r["prompt"], r.get("style"), r["expand_seed"]), []).append(r)
        keys = list(unique)
        start = time.perf_counter()
        self.calls += 1
        results = self.rewriter.rewrite([self.chat(p, style) for p, style, _ in keys], [s for _, _, s in keys],
                                        o.temperature, o.top_p, o.max_new_tokens)
        seconds = (time.perf_counter() - start) / len(keys)
        for key, rewrite in zip(keys, results):
            for r in unique[key]:
                self.finish(r, rewrite, seconds)
        return rows
