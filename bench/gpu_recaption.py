"""GPU figure for recaptioning: rewrites per second of the `local` backend's batched loop on a real-size
instruct model. Needs a CUDA GPU; elsewhere it says so and exits.

    python bench/gpu_recaption.py [--batches 1 8 32 64] [--prompts 64] [--new-tokens 200]

The model is Qwen2.5-7B-Instruct's architecture (its config, random bf16 weights: nothing is downloaded)
run by `stages.models.rewriters.LocalRewriter` exactly as `expand: {mode: llm, backend: local}` runs it, with
the builtin tokenizer. Random weights never say when to stop, so every rewrite is --new-tokens long
(200 is about a 120-word caption): the figure is the steady cost of that caption length.

What matters on a GPU cluster is this figure against the sampler's seconds per video (bench/gpu.py):
a 14B Wan video takes minutes of GPU time, so a rewriter that makes even one rewrite per second on one
GPU keeps up with dozens of sampling GPUs. Batch size is the lever: a batch of 32 makes the decode steps
matrix products instead of matrix-vector products.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine_info import describe  # bench/machine_info.py, next to this file

# Qwen/Qwen2.5-7B-Instruct, config.json
QWEN25_7B = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                 num_key_value_heads=4, max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6,
                 tie_word_embeddings=False, vocab_size=152064)


def main() -> None:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64])
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=200)
    args = ap.parse_args()
    print(describe())
    if not torch.cuda.is_available():
        print("no CUDA GPU here: nothing measured (run on a GPU machine)")
        return
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from stages.models.builtin import build_tokenizer
    from stages.models.rewriters import SYSTEM_PROMPTS, LocalRewriter, messages_for

    tok = build_tokenizer()
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen2ForCausalLM(Qwen2Config(**QWEN25_7B, pad_token_id=tok.pad_token_id)).to(torch.bfloat16).eval()
    print(f"Qwen2.5-7B architecture: {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters, bf16")
    rw = LocalRewriter.__new__(LocalRewriter)  # the same loop, on a model built here instead of loaded
    import inspect

    rw.tokenizer, rw.model, rw.device, rw.stop = tok, model, "cuda", set()
    rw.tokenizer.padding_side = "left"
    rw.cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    chats = [messages_for(f"a scene idea number {i}: a cat walking along a beach at sunset", SYSTEM_PROMPTS["en"],
                          []) for i in range(args.prompts)]
    rw.rewrite(chats[:2], [0, 1], 0.7, 0.9, 8)
    base = None
    for b in args.batches:
        torch.cuda.synchronize()
        start = time.perf_counter()
        for i in range(0, len(chats), b):
            rw.rewrite(chats[i:i + b], list(range(i, i + len(chats[i:i + b]))), 0.7, 0.9, args.new_tokens)
        torch.cuda.synchronize()
        s = time.perf_counter() - start
        base = base or len(chats) / s
        print(f"batch {b:>3}: {len(chats) / s:7.2f} rewrites/s  {len(chats) * args.new_tokens / s:8.0f} tokens/s  "
              f"({len(chats) / s / base:.1f}x batch {args.batches[0]})")


if __name__ == "__main__":
    main()
