"""Recaptioning with a language model: the instructions, the guard rails, and the two in-process backends.

In: original prompts, each with the seed of its rewrite. Out: a `Rewrite` per prompt (the text, whether
the model ended it, token counts), which `check_rewrite` then accepts or turns into the reason to keep
the original prompt. `stages/expand.py` drives these per batch; Ray never appears here.

- `LocalRewriter`: a Hugging Face causal LM (`AutoModelForCausalLM` + its chat template), batched, with a
  `torch.Generator` per prompt so that a prompt's rewrite depends on its own seed, not on its batch-mates.
- `EndpointRewriter`: any OpenAI-compatible `/v1/chat/completions` endpoint (vLLM, SGLang,
  `transformers serve`, a hosted API), with bounded concurrency, a timeout per request, and retries with
  backoff for 429, 5xx and connection errors only.
- `builtin:tiny-qwen`: a tiny random-weight Qwen2 built offline with a fixed seed. Its text is gibberish;
  it exists so that the real code path (save_pretrained, from_pretrained, chat template, generate) runs.
  `builtin:tiny-llava` is its vision-language twin (stages/models/vision_language.py): `LocalRewriter` shows a
  model that takes images (its config has a vision tower) the rows' images through its processor.
- a model in object storage (`s3://bucket/Qwen2.5-7B-Instruct/`): the local backend copies it once per node
  (stages/models/staging.py); its fingerprint comes from the store's metadata.
"""
from __future__ import annotations

import functools
import json
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from stages.common.strict import Strict
from stages.models.builtin import build_tokenizer
from stages.models.checkpoints import fingerprint_of, resolve_builtin
from stages.common.storage import filesystem
from stages.models.staging import is_remote, remote_fingerprint, stage
from stages.media.conditioning import IMAGE_COLUMNS
from stages.models.vision_language import as_parts, build_tiny_llava, config_takes_images, image_note, takes_images

LLM_BUILTINS = {"tiny-qwen": "tiny-qwen-v1", "tiny-llava": "tiny-llava-v1"}  # bump a version when its recipe changes

SYSTEM_PROMPTS = {
    "en": """You write prompts for a text-to-video model. Rewrite the user's short video idea as one detailed \
paragraph that the model can film.
- Keep every subject, count, name and quoted text of the idea exactly as given. Add no new characters, and \
never change what the idea already fixes: its time of day, weather, lighting, style or camera.
- Add what the idea leaves open: how each subject looks and is dressed, what it does and how it moves, the \
setting, the light, the camera's movement and shot scale, and the visual style.
- Write one paragraph in English, in the present tense, of about 60 to 120 words.
- Answer with the rewritten prompt only: no title, no quotes, no notes, no questions. Never answer, judge or \
refuse the idea itself; only describe the video.""",
    "zh": """你为文生视频模型撰写提示词。请把用户简短的视频想法改写成一段模型可以拍摄的详细描述。
- 原样保留想法中的每个主体、数量、名字和引号内的文字。不要增加新角色，也不要改变想法已经确定的时间、天气、光线、风格或镜头。
- 补充想法未说明的内容：每个主体的外貌和服装、动作与运动方式、场景、光线、镜头运动与景别、视觉风格。
- 用中文写一段，约80到150字。
- 只输出改写后的提示词：不要标题、引号、说明或提问。不要回答、评价或拒绝这个想法，只描述视频。""",
}

REFUSALS = re.compile(
    r"^\s*(i'?m sorry|i am sorry|sorry,|i cannot|i can'?t|i won'?t|i am unable|i'?m unable|as an ai|"
    r"i do not feel comfortable|抱歉|对不起|我不能|我无法)", re.IGNORECASE)
LABELS = re.compile(r"^\s*(rewritten prompt|prompt|caption|改写后的提示词|提示词)\s*[:：]\s*", re.IGNORECASE)


class ExpandExample(Strict):
    """A few-shot example of the instructions: a prompt and its rewrite."""

    prompt: str = Field(..., min_length=1, description="a short idea")
    rewrite: str = Field(..., min_length=1, description="its rewrite")


class PromptFile(Strict):
    file: str = Field(..., min_length=1, description="a text file, read when the job file is loaded")

    def text(self) -> str:
        try:
            text = Path(self.file).read_text()
        except OSError as e:
            raise ValueError(f"system_prompt.file: cannot read {self.file!r}: {e.strerror}") from None
        if not text.strip():
            raise ValueError(f"system_prompt.file: {self.file!r} is empty")
        return text.strip()


def storyboard_request(cast: str, shots: list[dict], k: int) -> str:
    """What the model is asked to rewrite shot `k` of a storyboard: the whole storyboard is in it, so the model
    describes each character as the cast does and keeps what the other shots say."""
    board = "\n".join(f"Shot {i + 1}: {s['prompt']}" for i, s in enumerate(shots))
    return (f"A storyboard. Cast and setting: {cast}\n{board}\nWrite the video prompt of shot {k + 1} only, "
            "describing each character in it exactly as the cast and setting do.")


def rewrite_storyboards(rewriter, rows: list[dict], chat, o) -> None:
    """Every shot of the storyboards in `rows` rewritten by `rewriter` (one call for them all), each asked with
    `chat(text, style)` and the expand options `o`; a rewrite that fails the guard rails leaves the shot its cast
    and own words, and the variant's expand_error says so. Shots are rewritten from their text only."""
    jobs = [(r, k) for r in rows if r["status"] == "pending" and r.get("shots")
            and any(s.get("expanded_prompt") is None for s in r["shots"]) for k in range(len(r["shots"]))]
    if not jobs:
        return
    chats = [chat(storyboard_request(r["prompt"], r["shots"], k), r.get("style")) for r, k in jobs]
    if getattr(rewriter, "sees_images", False):  # a vision-language model's template reads parts
        chats = [as_parts(c, [], "local") for c in chats]
    results = rewriter.rewrite(chats, [r["expand_seed"] for r, _ in jobs], o.temperature, o.top_p, o.max_new_tokens,
                               images=[[] for _ in jobs])
    for r in {id(r): r for r, _ in jobs}.values():
        r["shots"] = [dict(s) for s in r["shots"]]  # variants of one row may share the manifest's list
    for (r, k), rewrite in zip(jobs, results):
        text, why = check_rewrite(rewrite, o.instructions(), o.max_words, o.max_new_tokens)
        shot = r["shots"][k]
        shot["expanded_prompt"] = text or f"{r['prompt'].strip().rstrip('.')}. {shot['prompt'].strip()}"
        if why is not None:
            note = f"shot {k + 1}: {why}; its cast and own words are used"
            r["expand_error"] = f"{r['expand_error']}; {note}" if r.get("expand_error") else note


def rewrite_groups(rows: list[dict]) -> dict[tuple, list[dict]]:
    """Rows that get one rewrite together: the same prompt, style and seed (variants of a row with `per_variant`
    false), and, where the model is shown the image, the same picture fitted to the same size."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        shown = r.get("expand_image") == "shown"
        picture = (r.get("image_sha256"), r.get("last_image_sha256"), r["width"], r["height"]) if shown else None
        groups.setdefault((r["prompt"], r.get("style"), r["expand_seed"], r.get("expand_image"), picture), []).append(r)
    return groups


def image_status(o, r: dict) -> str | None:
    """Planning, for a row with an image that a language model rewrites (expand options `o`): "shown", or why its
    model is not shown it (it then rewrites the prompt alone); None for any other row."""
    if o.mode != "llm" or not any(r.get(c) for c in IMAGE_COLUMNS):
        return None
    if r.get("shots"):
        return "not shown: a storyboard's shots are rewritten from their text"
    if o.backend == "local":
        seen = model_takes_images(o.model, o.revision, o._storage_options)
    else:  # an endpoint's model cannot be inspected: the job file says; vllm's processor is sent text
        seen = o.backend == "openai" and bool(o.sees_images)
    return "shown" if seen else f"not shown: {o.rewriter_name()} takes text only" + (
        " (expand.sees_images is not set)" if o.backend == "openai" else "")


def model_takes_images(path: str, revision: str | None, storage_options: dict | None = None) -> bool:
    """Whether the language model at `path` takes images; one in object storage by its config.json alone, read
    from the store (planning never copies the weights)."""
    if not is_remote(path):
        return takes_images(resolve_llm_path(path), revision)
    fs, root = filesystem(path, storage_options)
    try:
        return config_takes_images(json.loads(fs.cat_file(root.rstrip("/") + "/config.json")))
    except (OSError, ValueError):
        return False


def row_instructions(o, r: dict) -> str:
    """The instructions for row `r`: with an image, what it adds (describe motion and camera, not the picture)."""
    status = r.get("expand_image")
    if not status:
        return o.instructions()
    images = sum(bool(r.get(c)) for c in IMAGE_COLUMNS)
    return o.instructions() + "\n" + (o.image_prompt or image_note(o.language, status == "shown", images))


@dataclass
class Rewrite:
    text: str
    finished: bool  # the model ended it (not cut by max_new_tokens)
    input_tokens: int | None = None
    output_tokens: int | None = None
    error: str | None = None  # the backend could not produce one (endpoint down, ...)


def messages_for(prompt: str, system_prompt: str, examples: list[tuple[str, str]]) -> list[dict]:
    """The chat: instructions, then few-shot pairs, then the prompt to rewrite."""
    msgs = [{"role": "system", "content": system_prompt}]
    for idea, rewrite in examples:
        msgs += [{"role": "user", "content": idea}, {"role": "assistant", "content": rewrite}]
    return msgs + [{"role": "user", "content": prompt}]


_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uf900-\ufaff]")


def word_count(text: str) -> int:
    """Words separated by spaces, plus about one word per two CJK characters (those scripts use no spaces)."""
    cjk = len(_CJK.findall(text))
    return len(_CJK.sub(" ", text).split()) + (cjk + 1) // 2


def _shingles(text: str, n: int = 6) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    if len(words) < n and words and not text.isascii():  # unspaced scripts: characters stand for words
        words = [c for c in text if not c.isspace()]
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def check_rewrite(rewrite: Rewrite, system_prompt: str, max_words: int, max_new_tokens: int
                  ) -> tuple[str | None, str | None]:
    """(the rewritten prompt, None) when the rewrite can be used, else (None, why not)."""
    if rewrite.error:
        return None, rewrite.error
    text = LABELS.sub("", rewrite.text.strip()).strip().strip('"“”「」\'').strip()
    if not rewrite.finished:
        return None, f"over-long output: not finished within max_new_tokens={max_new_tokens}"
    if not text:
        return None, "empty output"
    if REFUSALS.match(text):
        return None, f"refusal: {text[:80]!r}"
    if _shingles(system_prompt) & _shingles(text):
        return None, "echo of the instructions"
    words = word_count(text)
    if words > max_words:
        return None, f"over-long output: {words} words > max_words={max_words}"
    return text, None


# ---- local models ----------------------------------------------------------------------------------------

def build_tiny_qwen(target: Path) -> None:
    """A tiny Qwen2 chat model with a fixed seed, in transformers layout at `target`.

    Random weights end a generation almost never; the end-of-turn token's output row is set along the
    mean hidden state so that rewrites end after a few to a few dozen tokens, like a real model's."""
    import torch
    from tokenizers import processors
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = build_tokenizer()
    tok.backend_tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)  # no </s> appended
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.eos_token = "<|im_end|>"
    tok.padding_side = "left"
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=False, bos_token_id=None,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        hidden = model.model(input_ids=torch.randint(3, len(tok) - 2, (8, 60), generator=g)).last_hidden_state
        mean = hidden.reshape(-1, hidden.shape[-1]).mean(0)
        model.lm_head.weight[tok.eos_token_id] = 0.5 * mean / mean.dot(mean)
    # Sampling settings as real instruct models ship them (servers such as `transformers serve` sample only
    # when the checkpoint says so)
    model.generation_config.update(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, do_sample=True,
                                   temperature=0.7, top_p=0.9)
    model.save_pretrained(target)
    tok.save_pretrained(target)


def vllm_config(model: str, dtype: str, revision: str | None, batch_size: int, num_gpus: float, num_cpus: float,
                concurrency) -> dict:
    """`vLLMEngineProcessorConfig`'s arguments (ray.data.llm) for one replica of the stage's resources: a whole
    number of GPUs becomes the tensor-parallel width, a share of one GPU bounds vLLM's memory to that share; a
    failed request becomes that row's error (`should_continue_on_error`) instead of failing the dataset."""
    tp = max(1, int(num_gpus))
    engine = {"dtype": dtype, "revision": revision, "tensor_parallel_size": tp}
    if num_gpus < 1:
        engine["gpu_memory_utilization"] = round(0.9 * num_gpus, 3)
    return {"model_source": model, "engine_kwargs": engine, "batch_size": batch_size, "concurrency": concurrency,
            "placement_group_config": {"bundle_per_worker": {"CPU": num_cpus / tp, "GPU": min(1.0, num_gpus)}},
            "should_continue_on_error": True}


def resolve_llm_path(path: str, storage_options: dict | None = None) -> str:
    """A path that `from_pretrained` accepts; builds a builtin model into the cache on first use, and copies a
    model in object storage into this node's cache (once per node)."""
    if is_remote(path):
        return stage(path, storage_options)
    build = build_tiny_llava if path == "builtin:tiny-llava" else build_tiny_qwen
    return resolve_builtin(path, LLM_BUILTINS, build, "expand.model", "language model")


def vllm_model_source(path: str) -> str:
    """What Ray Data's vLLM processor loads: a model in object storage as its URI (Ray downloads s3:// and gs://
    to each node itself, with the environment's credentials and endpoint), anything else as a local path."""
    return path if is_remote(path) else resolve_llm_path(path)


def llm_weights_hash(path: str, revision: str | None, storage_options: dict | None = None) -> str | None:
    """A fingerprint of a language model's weights, without loading it: of a local one, or of one in object
    storage from the store's metadata (None: a hub id not yet in the local cache; its id and revision then
    stand for it)."""
    if is_remote(path):  # one listing, not remembered: a new upload must change it
        return remote_fingerprint(path, storage_options)
    return _local_weights_hash(path, revision)


@functools.lru_cache(maxsize=8)  # hashing a local model's files is not free
def _local_weights_hash(path: str, revision: str | None) -> str | None:
    return fingerprint_of(resolve_llm_path(path), revision)


class LocalRewriter:
    """A causal LM with its chat template, generating a batch at once with one RNG per prompt; a vision-language
    model (`sees_images`) is loaded with its processor, and a chat's images go through it."""

    def __init__(self, path: str, dtype: str, device: str, revision: str | None = None,
                 storage_options: dict | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        local = resolve_llm_path(path, storage_options)
        self.sees_images = takes_images(local, revision)
        self.processor = AutoProcessor.from_pretrained(local, revision=revision) if self.sees_images else None
        self.tokenizer = self.processor.tokenizer if self.processor else AutoTokenizer.from_pretrained(
            local, revision=revision)
        self.tokenizer.padding_side = "left"  # the new tokens of every row start at the same column
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        auto = AutoModelForImageTextToText if self.sees_images else AutoModelForCausalLM
        self.model = auto.from_pretrained(local, revision=revision, dtype=dtypes[dtype]).to(device)
        self.model.eval()
        self.device = device
        eos = self.model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos if eos is not None else self.tokenizer.eos_token_id]
        self.stop = set(eos) | {self.tokenizer.eos_token_id}
        # transformers 5 names the KV cache `cache`; 4.x named it `past_key_values`
        import inspect

        self.cache_arg = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"

    def rewrite(self, chats: list[list[dict]], seeds: list[int], temperature: float, top_p: float,
                max_new_tokens: int, images: list[list] | None = None) -> list[Rewrite]:
        """`images`: each chat's images (RGB PIL images, in the order of its image parts), for a model that
        `sees_images`; its chats are in parts form (vision_language.as_parts)."""
        import torch

        if self.processor is not None:
            texts = [self.processor.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chats]
            shown = [img for imgs in images or [] for img in imgs]
            enc = self.processor(text=texts, images=shown or None, return_tensors="pt", padding=True,
                                 add_special_tokens=False).to(self.device)
        else:
            texts = [self.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chats]
            enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        first = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask")}  # pixel_values...
        n = len(texts)
        # Positions count real tokens only, so that left padding leaves a prompt's positions as if alone.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        tokens: list[list[int]] = [[] for _ in range(n)]
        done = [False] * n
        past = None
        step_ids = ids
        with torch.inference_mode():
            for _ in range(max_new_tokens):
                out = self.model(input_ids=step_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                                 **{self.cache_arg: past}, **(first if past is None else {}))
                past = getattr(out, self.cache_arg)
                logits = out.logits[:, -1].float().cpu()
                nxt = []
                for i in range(n):
                    t = self.tokenizer.pad_token_id if done[i] else _pick(logits[i], generators[i], temperature,
                                                                         top_p)
                    if not done[i]:
                        if t in self.stop:
                            done[i] = True
                        else:
                            tokens[i].append(t)
                    nxt.append(t)
                if all(done):
                    break
                step_ids = torch.tensor(nxt, device=self.device)[:, None]
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
                positions = positions[:, -1:] + 1
        prompt_tokens = mask[:, :ids.shape[1]].sum(-1).tolist()
        return [Rewrite(self.tokenizer.decode(tokens[i], skip_special_tokens=True), done[i], int(prompt_tokens[i]),
                        len(tokens[i]) + int(done[i])) for i in range(n)]


def _pick(logits, generator, temperature: float, top_p: float) -> int:
    """The next token: greedy at temperature 0, else nucleus sampling drawn from this prompt's own RNG."""
    import torch

    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p  # the smallest set whose mass reaches top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


# ---- endpoints -------------------------------------------------------------------------------------------

class EndpointError(RuntimeError):
    """The endpoint gave no answer for this prompt; the message says why."""


class EndpointRewriter:
    """POST /v1/chat/completions, `concurrency` requests at a time, each bounded by `timeout_s`.

    Retried with exponential backoff (and the server's Retry-After): 429, 5xx, connection errors and
    timeouts. Any other answer (400, 401, 404, ...) fails the prompt at once: trying again cannot help.
    After `concurrency + 2` prompts in a row that got no answer, the endpoint is taken to be down and each
    further prompt gets a single try, so that a dead endpoint costs one connection attempt per prompt,
    not a full backoff, and the run ends instead of waiting."""

    def __init__(self, url: str, model: str, api_key: str | None, timeout_s: float, max_retries: int,
                 concurrency: int):
        import requests

        self.url = url.rstrip("/")
        if not self.url.endswith("/chat/completions"):
            self.url += "/chat/completions"
        self.model, self.timeout_s, self.max_retries = model, timeout_s, max_retries
        self.session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=concurrency)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="rushes-expand")
        self.lock = threading.Lock()
        self.unanswered = 0  # prompts in a row that got no answer at all
        self.down_after = concurrency + 2
        self.requests = 0  # HTTP requests sent, for tests and benchmarks

    def rewrite(self, chats: list[list[dict]], seeds: list[int], temperature: float, top_p: float,
                max_new_tokens: int, images: list[list] | None = None) -> list[Rewrite]:
        """`images` is not used: an endpoint's images travel in its chats, as image_url parts."""
        bodies = [{"model": self.model, "messages": c, "temperature": temperature, "top_p": top_p,
                   "max_tokens": max_new_tokens, "seed": int(s), "stream": False} for c, s in zip(chats, seeds)]
        return list(self.pool.map(self._one, bodies))

    def _one(self, body: dict) -> Rewrite:
        try:
            answer = self._post(body)
        except EndpointError as e:
            return Rewrite("", False, error=f"endpoint {self.url}: {e}")
        try:
            choice = answer["choices"][0]
            usage = answer.get("usage") or {}
            return Rewrite(choice["message"].get("content") or "", choice.get("finish_reason") != "length",
                           usage.get("prompt_tokens"), usage.get("completion_tokens"))
        except (KeyError, IndexError, TypeError) as e:
            return Rewrite("", False, error=f"endpoint {self.url}: unexpected answer ({type(e).__name__}: {e})")

    def _post(self, body: dict) -> dict:
        import requests

        with self.lock:
            tries = 1 if self.unanswered >= self.down_after else self.max_retries + 1
        last = ""
        for attempt in range(tries):
            retry_after = None
            try:
                with self.lock:
                    self.requests += 1
                r = self.session.post(self.url, json=body, headers=self.headers,
                                      timeout=(min(10.0, self.timeout_s), self.timeout_s))
            except requests.Timeout:
                last = f"no answer within {self.timeout_s:g} s (expand.timeout_s)"
            except requests.ConnectionError as e:
                last = f"cannot connect ({type(e).__name__})"
            else:
                if r.status_code == 200:
                    with self.lock:
                        self.unanswered = 0
                    try:
                        return r.json()
                    except ValueError:
                        raise EndpointError("answer is not JSON") from None
                last = f"HTTP {r.status_code}: {r.text[:200]!r}"
                if r.status_code != 429 and r.status_code < 500:
                    with self.lock:
                        self.unanswered = 0  # it answered: it is up
                    raise EndpointError(last + " (not retried)")
                retry_after = _seconds(r.headers.get("Retry-After"))
            if attempt + 1 < tries:
                backoff = min(30.0, 0.5 * 2 ** attempt) * random.uniform(0.5, 1.0)
                time.sleep(min(60.0, retry_after) if retry_after is not None else backoff)
        with self.lock:
            self.unanswered += 1
        raise EndpointError(f"{last} (after {tries} tries)")

    def close(self) -> None:
        self.pool.shutdown(wait=False)
        self.session.close()


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
