"""Recaptioning throughput: rewrites per second of the `local` backend, batch 1 against batched, and of the
`openai` backend against a real `transformers serve` at concurrency 1, 4 and 16.

    python bench/recaption.py [--prompts 32] [--batches 1 8 32] [--concurrency 1 4 16] [--max-new-tokens 64]

Both use builtin:tiny-qwen (built offline into the cache, loaded with from_pretrained) on this machine, so
the figures measure the machinery (batching, the per-prompt RNG loop, HTTP, the server's queue), not a
real model's arithmetic: compare them as ratios within one run. The prompts are the demo's kind
(short scene ideas); each rewrite ends at the model's end-of-turn token or at --max-new-tokens.
Tokens per second count the tokens generated.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine_info import describe  # bench/machine_info.py, next to this file

IDEAS = ["a cat walking along a beach at sunset", "a red car driving through a city at night",
         "two robots dancing in a warehouse", "a chef cooking in a busy kitchen", "whales swimming under the sea",
         "a forklift moving pallets in the rain", "a sneaker on a rotating pedestal", "a crowd at a concert"]


def local(prompts: list[str], batches: list[int], max_new_tokens: int) -> None:
    from stages.models.rewriters import SYSTEM_PROMPTS, LocalRewriter, messages_for

    rw = LocalRewriter("builtin:tiny-qwen", "float32", "cpu")
    chats = [messages_for(p, SYSTEM_PROMPTS["en"], []) for p in prompts]
    rw.rewrite(chats[:2], [0, 1], 0.7, 0.9, 8)  # warm-up
    base = None
    for b in batches:
        start = time.perf_counter()
        tokens = 0
        for i in range(0, len(chats), b):
            out = rw.rewrite(chats[i:i + b], list(range(i, i + len(chats[i:i + b]))), 0.7, 0.9, max_new_tokens)
            tokens += sum(r.output_tokens for r in out)
        s = time.perf_counter() - start
        base = base or len(chats) / s
        print(f"local   batch {b:>3}: {len(chats) / s:8.1f} rewrites/s  {tokens / s:8.0f} tokens/s  "
              f"({len(chats) / s / base:.2f}x batch {batches[0]})")


def endpoint(prompts: list[str], levels: list[int], max_new_tokens: int) -> None:
    from stages.models.rewriters import SYSTEM_PROMPTS, EndpointRewriter, messages_for, resolve_llm_path
    from tests.faulty_llm import LLMServer

    model = resolve_llm_path("builtin:tiny-qwen")
    server = LLMServer(model, Path(tempfile.mkdtemp()) / "serve.log")
    try:
        chats = [messages_for(p, SYSTEM_PROMPTS["en"], []) for p in prompts]
        url = f"http://127.0.0.1:{server.port}/v1"
        EndpointRewriter(url, model, None, 60, 0, 1).rewrite(chats[:2], [0, 1], 0.7, 0.9, 8)  # warm-up
        base = None
        for c in levels:
            rw = EndpointRewriter(url, model, None, 120, 0, c)
            start = time.perf_counter()
            out = rw.rewrite(chats, list(range(len(chats))), 0.7, 0.9, max_new_tokens)
            s = time.perf_counter() - start
            errors = sum(1 for r in out if r.error)
            tokens = sum(r.output_tokens or 0 for r in out)
            base = base or len(chats) / s
            print(f"openai  concurrency {c:>3}: {len(chats) / s:8.1f} rewrites/s  {tokens / s:8.0f} tokens/s  "
                  f"({len(chats) / s / base:.2f}x concurrency {levels[0]}; {errors} errors)")
            rw.close()
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--max-new-tokens", type=int, default=64)
    args = ap.parse_args()
    os.environ.setdefault("RUSHES_CACHE", str(Path.home() / ".cache" / "rushes"))
    import torch

    torch.set_num_threads(1)  # one rewriter replica on one CPU, as the job's defaults run it on a CPU machine
    print(describe())
    prompts = [IDEAS[i % len(IDEAS)] for i in range(args.prompts)]
    print(f"{len(prompts)} prompts, builtin:tiny-qwen, max_new_tokens {args.max_new_tokens}, temperature 0.7")
    local(prompts, args.batches, args.max_new_tokens)
    endpoint(prompts, args.concurrency, args.max_new_tokens)


if __name__ == "__main__":
    main()
