"""Prompt expansion ("recaptioning") and variants.

Two halves:
- `variants(rows)`, in the driver while planning: one row per variant, with `variant` and a stable
  `seed`. With `mode: template` or `none` it also writes `expanded_prompt` there: both are pure Python
  and need no worker. With `mode: llm` the prompt is rewritten later, on Ray, and the planner's
  `params_hash` covers the original prompt plus the rewriter's identity (`ExpandOptions.pixel_settings`),
  so a re-run decides skip or regenerate without loading a model or calling an endpoint.
- `__call__(rows)`, on Ray (`mode: llm` only; an actor pool before sampling): rewrites each pending
  variant that has no `expanded_prompt` yet, through the backend (`local`, `openai`; `vllm` is Ray Data's
  own LLM processor, wired in pipeline/graph.py), and records `expanded_prompt`, `expand_model`,
  `expand_seconds`, token counts and, when the original had to be kept, `expand_error`.

The template never contradicts its prompt: it adds no time of day or lighting, style or camera that the
prompt already fixes, and it leaves a prompt that is not in English as it is (and says so in the record).
"""
from __future__ import annotations

import functools
import random
import re
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from stages.base import Stage, StageOptions, Strict, pick_device, use_threads

DETAILS = ["highly detailed textures", "natural motion", "realistic proportions", "fine surface detail",
           "subtle depth of field", "crisp focus on the subject", "rich color", "soft film grain"]
CAMERAS = ["slow dolly-in", "wide establishing shot", "smooth tracking shot", "static tripod shot",
           "low-angle shot", "aerial drone shot", "handheld close-up", "slow orbit around the subject"]
LIGHTING = ["golden hour lighting", "soft overcast light", "dramatic rim light", "blue hour ambience",
            "warm practical lights", "high-key studio lighting", "volumetric light through haze",
            "moonlit night"]
STYLES = ["cinematic", "photorealistic", "documentary", "35mm film", "commercial product", "anime",
          "watercolor", "vintage"]
# A prompt with at least this many words is treated as already detailed.
DETAILED_WORDS = 25

# What a prompt can already fix. A template word of a kind the prompt fixes is left out.
_WORDS = {
    "lighting": r"sunset|sunrise|dawn|dusk|twilight|morning|noon|midday|afternoon|evening|night|midnight|"
                r"daylight|daytime|moon\w*|golden hour|blue hour|overcast|neon|candle\w*|lamp\w*|lit|"
                r"lighting|light|backlit|shadows?|sunlight|sunny|dark|darkness|storm\w*|fog\w*|rain\w*",
    "camera": r"shot|close-?up|dolly|tracking|aerial|drone|pan|panning|tilt|orbit\w*|zoom\w*|handheld|"
              r"tripod|pov|point of view|crane|low-angle|high-angle|bird'?s-eye|wide-angle|camera|lens|"
              r"timelapse|time-lapse|slow motion",
    "style": r"style|cinematic|photorealistic|realistic|documentary|anime|manga|cartoon|watercolor|"
             r"oil painting|painting|sketch|pixel art|claymation|3d render|cgi|35mm|16mm|film|vintage|noir|"
             r"retro|vhs|illustration|comic|surreal",
}
FIXES = {kind: re.compile(rf"\b({words})\b", re.IGNORECASE) for kind, words in _WORDS.items()}
_LATIN = re.compile(r"[A-Za-z]")
_LETTER = re.compile(r"[^\W\d_]")


def not_english(prompt: str) -> bool:
    """Mostly letters outside the Latin alphabet (Chinese, Cyrillic, ...): the template's English words
    would be glued onto another language."""
    letters = _LETTER.findall(prompt)
    return bool(letters) and len(_LATIN.findall(prompt)) < 0.8 * len(letters)


class ExpandExample(Strict):
    prompt: str = Field(..., min_length=1)
    rewrite: str = Field(..., min_length=1)


class PromptFile(Strict):
    file: str = Field(..., min_length=1, description="a text file, read when the job file is loaded")


class ExpandOptions(StageOptions):
    """`mode: llm` runs as an actor pool before sampling, with its own batch size and resources."""

    mode: Literal["template", "none", "llm"] = "template"
    styles: list[str] = Field(default_factory=list, description="template: styles to draw from; empty = built-in")
    backend: Literal["local", "openai", "vllm"] = "local"
    model: str | None = Field(None, description="llm: builtin:tiny-qwen, a folder or hub id (local, vllm), or "
                                                "the endpoint's model name (openai)")
    revision: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    url: str | None = Field(None, description="openai: the endpoint, e.g. http://vllm:8000/v1")
    api_key_env: str | None = Field(None, description="openai: the environment variable holding the API key")
    language: Literal["en", "zh"] = Field("en", description="the language of the rewritten prompt")
    system_prompt: str | PromptFile | None = Field(
        None, description="instructions, inline or {file: PATH}; unset = the built-in ones for `language`")
    examples: list[ExpandExample] = Field(default_factory=list, description="few-shot (prompt, rewrite) pairs")
    per_variant: bool = Field(True, description="rewrite each variant with its own seed; false: one per row")
    on_error: Literal["fallback", "fail"] = Field(
        "fallback", description="a rewrite that cannot be used: keep the original prompt, or fail the variant")
    temperature: float = Field(0.7, ge=0, le=2)
    top_p: float = Field(0.9, gt=0, le=1)
    max_new_tokens: int = Field(256, ge=8, le=4096)
    max_words: int = Field(160, ge=10, description="a longer rewrite is refused (the original is kept)")
    keep_over_words: int = Field(120, ge=1, description="a prompt this long is detailed already: not rewritten")
    timeout_s: float = Field(60.0, gt=0, description="openai: seconds per request")
    max_retries: int = Field(4, ge=0, le=20, description="openai: retries of a 429, 5xx or connection error")
    concurrency: int = Field(8, ge=1, le=256, description="openai: requests in flight per replica")
    batch_size: int = Field(8, ge=1, description="prompts per call of the rewriter")

    @classmethod
    def resource_defaults(cls, data: dict) -> dict:
        local = data.get("mode") == "llm" and data.get("backend", "local") in ("local", "vllm")
        return {"num_gpus": 1.0} if local else {}

    @model_validator(mode="after")
    def _backend_settings(self) -> "ExpandOptions":
        if isinstance(self.system_prompt, PromptFile):
            try:
                text = Path(self.system_prompt.file).read_text()
            except OSError as e:
                raise ValueError(f"system_prompt.file: cannot read {self.system_prompt.file!r}: {e.strerror}")
            if not text.strip():
                raise ValueError(f"system_prompt.file: {self.system_prompt.file!r} is empty")
            self.__dict__["system_prompt"] = text.strip()  # the text travels to the workers, not the path
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

    def instructions(self) -> str:
        from stages.recaption import SYSTEM_PROMPTS

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
            identity.update(dtype=self.dtype, weights_hash=_weights_hash(self.model, self.revision))
        return {"expand": identity}


@functools.lru_cache(maxsize=8)
def _weights_hash(path: str, revision: str | None) -> str | None:
    from stages.recaption import llm_weights_hash

    return llm_weights_hash(path, revision)


class ExpandStage(Stage):
    name = "expand"
    Options = ExpandOptions

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
        if not_english(prompt):
            return prompt, "template did not apply: the prompt is not in English (the template's words are); kept as it is"
        rng = random.Random(seed)
        # Every draw is made whatever the prompt fixes, so that a prompt's other words stay as they were.
        detail, camera, light = rng.choice(DETAILS), rng.choice(CAMERAS), rng.choice(LIGHTING)
        drawn = rng.choice(self.options.styles or STYLES)
        base = prompt.strip().rstrip(".")
        if style is None and FIXES["style"].search(base):
            style = ""  # the prompt has its own style
        style = drawn if style is None else style
        tail = f"{style} style." if style and style.lower() not in base.lower() else ""
        if len(base.split()) >= DETAILED_WORDS:
            return (f"{base}. {tail}" if tail else f"{base}."), None
        words = [detail]
        if not FIXES["camera"].search(base):
            words.append(camera)
        if not FIXES["lighting"].search(base):
            words.append(light)
        return f"{base}, {', '.join(words)}" + (f", {tail}" if tail else "."), None

    def storyboard(self, prompt: str, shots: list[dict], seed: int, style: str | None) -> list[dict]:
        """Each shot's expanded prompt, written knowing the whole storyboard: the row's prompt (its cast and
        setting) opens every shot, so a character is described in the same words in each, and every shot gets
        the same draw of the template (one seed: the same style, camera and light), so the style carries over."""
        cast = prompt.strip().rstrip(".")
        return [{**s, "expanded_prompt": self.template(f"{cast}. {s['prompt'].strip()}", seed, style)[0]}
                for s in shots]  # mode none: the cast and the shot's own words, nothing added

    def variants(self, rows: list[dict], cells: list[dict] | None = None) -> list[dict]:
        """One row per variant of each valid manifest row: `num_variants` of them, or one per cell of the job's
        variant matrix (`cells`: style, aspect_ratio, seed_index, height, width; None = the row's own), where
        cells with the same seed index share a seed, so that they differ only by their style and shape."""
        llm = self.options.mode == "llm"
        out = []
        for row in rows:
            start = time.perf_counter()
            row_cells = cells or [{"seed_index": i} for i in range(row["num_variants"])]
            for variant, cell in enumerate(row_cells):
                seed = (row["seed"] + cell["seed_index"]) % 2**31
                v = {k: val for k, val in row.items() if k != "num_variants"}
                v.update({k: val for k, val in cell.items() if val is not None})
                v.setdefault("aspect_ratio", None)
                if cells is None:
                    v["seed_index"] = None
                v.update(variant=variant, seed=seed, status="pending", error=None, reasons=[], metrics={},
                         expand_model=self.options.rewriter_name(),
                         expand_seed=(seed if self.options.per_variant else row["seed"]) if llm else None)
                if llm:
                    v.update(expanded_prompt=None, expand_error=None)
                else:
                    v["expanded_prompt"], v["expand_error"] = self.template(row["prompt"], seed, v.get("style"))
                    if v.get("shots"):
                        v["shots"] = self.storyboard(row["prompt"], v["shots"], seed, v.get("style"))
                v["stage_seconds"] = {} if llm else {"expand": (time.perf_counter() - start) / len(row_cells)}
                v["expand_seconds"] = v["stage_seconds"].get("expand")
                out.append(v)
        return out

    # ---- on Ray, with mode llm ---------------------------------------------------------------------------

    def setup(self) -> None:
        from stages.recaption import EndpointRewriter, LocalRewriter

        o = self.options
        if o.backend == "local":
            use_threads(o.resources)
            self.rewriter = LocalRewriter(o.model, o.dtype, pick_device(o.resources.num_gpus), o.revision)
        elif o.backend == "openai":
            import os

            key = os.environ.get(o.api_key_env) if o.api_key_env else None
            if o.api_key_env and not key:
                raise RuntimeError(f"expand.api_key_env: the environment variable {o.api_key_env} is not set on "
                                   "this worker")
            self.rewriter = EndpointRewriter(o.url, o.model, key, o.timeout_s, o.max_retries, o.concurrency)
        else:
            raise RuntimeError("backend vllm runs as Ray Data's LLM processor (pipeline/graph.py), not as this stage")

    def chat(self, prompt: str, style: str | None = None) -> list[dict]:
        from stages.recaption import messages_for

        asked = f"{prompt}\nStyle: {style}" if style else prompt
        return messages_for(asked, self.options.instructions(), [(e.prompt, e.rewrite) for e in self.options.examples])

    def to_rewrite(self, r: dict) -> bool:
        return r["status"] == "pending" and r.get("expanded_prompt") is None

    def keep_as_is(self, r: dict) -> bool:
        """A prompt that is already detailed is not rewritten (its own words are the best caption)."""
        from stages.recaption import word_count

        words = word_count(r["prompt"])
        if words < self.options.keep_over_words:
            return False
        r.update(expanded_prompt=r["prompt"], expand_input_tokens=None, expand_output_tokens=None,
                 expand_error=f"kept as it is: already {words} words (expand.keep_over_words="
                              f"{self.options.keep_over_words})")
        return True

    def finish(self, r: dict, rewrite, seconds: float) -> None:
        """Accept a rewrite, or record why the original prompt is kept (or the variant failed)."""
        from stages.recaption import check_rewrite

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
        """The chat that rewrites shot `k` of a storyboard: the whole storyboard is in it, so the model describes
        each character as the cast does and keeps what the other shots say."""
        board = "\n".join(f"Shot {i + 1}: {s['prompt']}" for i, s in enumerate(r["shots"]))
        return self.chat(f"A storyboard. Cast and setting: {r['prompt']}\n{board}\nWrite the video prompt of shot "
                         f"{k + 1} only, describing each character in it exactly as the cast and setting do.",
                         r.get("style"))

    def rewrite_shots(self, rows: list[dict]) -> None:
        """Every shot of the storyboards in `rows` rewritten by the model (one call for them all); a rewrite that
        fails the guard rails leaves the shot its cast and own words, and the variant's expand_error says so."""
        from stages.recaption import check_rewrite

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
