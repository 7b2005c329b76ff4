"""The toy models' configurations, the word-level tokenizers, and the prompt encoding that matches
`WanPipeline.encode_prompt` (prompt_clean, tokenizer, UMT5, embeddings zeroed past each prompt's length and
padded with zeros to 512 tokens); and what every training stage shares (train.py, clip_train.py): the learning
rate schedule and the atomic checkpoint save."""
from __future__ import annotations

import math
import os
from pathlib import Path

from training.toy_world import world

MAX_SEQ = 512  # the family's max_sequence_length: WanPipeline pads text embeddings to it

# Extra words the tokenizers know beyond the grammar, so that a near-miss prompt tokenizes to words, not <unk>
EXTRA_WORDS = ["the", "an", "is", "in", "of", "with", "to", "two", "one", "object", "objects", "shape", "shapes",
               "move", "moved", "stay", "stays", "staying", "still", "static", "towards", "toward", "scene", "video",
               "clip", ".", ";", ":", "-", "grey", "dark", "light", "left", "right", "up", "down"]

VAE_KW = dict(base_dim=8, decoder_base_dim=12, z_dim=8, dim_mult=[1, 2, 2], num_res_blocks=1,
              temperal_downsample=[True, True], scale_factor_spatial=4, scale_factor_temporal=4)
TRANSFORMER_KW = dict(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=32, in_channels=8,
                      out_channels=8, text_dim=64, freq_dim=64, ffn_dim=384, num_layers=6, cross_attn_norm=True,
                      qk_norm="rms_norm_across_heads", rope_max_seq_len=64)
UMT5_KW = dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, relative_attention_num_buckets=16,
               dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)


def words() -> list[str]:
    return list(dict.fromkeys([*world.VOCAB, *EXTRA_WORDS]))


def build_t5_tokenizer():
    """A word-level tokenizer over the toy vocabulary: <pad>=0, </s>=1 appended to every prompt, <unk>=2."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "</s>", "<unk>", *words()])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=MAX_SEQ)


def new_vae():
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(**VAE_KW)


def load_vae(path):
    """The VAE trained by the `vae` stage, from its weights file (work/vae_final.pt), in eval mode."""
    import torch

    vae = new_vae()
    vae.load_state_dict(torch.load(path))
    return vae.eval()


def new_transformer():
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(**TRANSFORMER_KW)


def new_text_encoder(tokenizer):
    from transformers import UMT5Config, UMT5EncoderModel

    return UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), **UMT5_KW))


def encode_prompts(tokenizer, text_encoder, prompts: list[str], max_len: int = MAX_SEQ):
    """Text embeddings (B, max_len, d) exactly as WanPipeline._get_t5_prompt_embeds makes them (with grads)."""
    import torch
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean

    t = tokenizer([prompt_clean(p) for p in prompts], padding="longest", truncation=True, max_length=max_len,
                  add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    h = text_encoder(t.input_ids, t.attention_mask).last_hidden_state
    h = h * t.attention_mask.unsqueeze(-1).to(h.dtype)
    return torch.cat([h, h.new_zeros(h.shape[0], max_len - h.shape[1], h.shape[2])], dim=1)


# -- compact text padding for training ------------------------------------------------------------------------
# WanPipeline pads text embeddings with zeros to 512 tokens. Inside the transformer every zero row becomes the
# same key and value (the text projection and the K/V projections are per token), so attention over the 512-L
# identical pad keys equals attention over ONE of them with log(512-L) added to its logit. Training therefore
# keeps only the longest prompt's tokens plus one pad slot per row and adds that bias: the same function as the
# pipeline's 512-token path (checked in check_compact), at a fraction of the cross-attention cost.
class _CompactCrossAttn:
    """attn2 processor: WanAttnProcessor with an additive key bias taken from `holder["bias"]` when set."""

    def __init__(self, holder: dict):
        from diffusers.models.transformers.transformer_wan import WanAttnProcessor

        self.inner, self.holder = WanAttnProcessor(), holder

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        bias = self.holder.get("bias")
        return self.inner(attn, hidden_states, encoder_hidden_states, bias if bias is not None else attention_mask,
                          rotary_emb)


def enable_compact_text(transformer) -> dict:
    """Install the biased cross-attention on every block; returns the holder whose "bias" the caller sets."""
    holder: dict = {}
    for block in transformer.blocks:
        block.attn2.set_processor(_CompactCrossAttn(holder))
    return holder


def encode_compact(tokenizer, text_encoder, prompts: list[str], max_len: int = MAX_SEQ):
    """(embeddings (B, Lmax + 1, d), key bias (B, 1, 1, Lmax + 1)) equivalent to encode_prompts' 512 tokens."""
    import math

    import torch
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean

    t = tokenizer([prompt_clean(p) for p in prompts], padding="longest", truncation=True, max_length=max_len,
                  add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    h = text_encoder(t.input_ids, t.attention_mask).last_hidden_state
    h = h * t.attention_mask.unsqueeze(-1).to(h.dtype)
    h = torch.cat([h, h.new_zeros(h.shape[0], 1, h.shape[2])], dim=1)
    n = t.attention_mask.sum(1)  # real tokens per row
    slots = h.shape[1] - n  # zero slots per row in the compact form (>= 1)
    pad_bias = torch.log((max_len - n).float() / slots.float())
    real = torch.arange(h.shape[1]).unsqueeze(0) < n.unsqueeze(1)
    bias = torch.where(real, torch.zeros(()), pad_bias.unsqueeze(1))
    return h, bias.view(h.shape[0], 1, 1, -1).to(h.dtype)


def check_compact(tokenizer, text_encoder, transformer, prompts: list[str]) -> float:
    """Max |difference| between the transformer's output on the pipeline's 512-token embeddings and on the
    compact ones with the bias."""
    import torch

    holder = enable_compact_text(transformer)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(len(prompts), transformer.config.in_channels, 5, 16, 16, generator=g)
    ts = torch.rand(len(prompts), generator=g) * 1000
    with torch.no_grad():
        full = transformer(hidden_states=x, timestep=ts, encoder_hidden_states=encode_prompts(
            tokenizer, text_encoder, prompts), return_dict=False)[0]
        emb, holder["bias"] = encode_compact(tokenizer, text_encoder, prompts)
        compact = transformer(hidden_states=x, timestep=ts, encoder_hidden_states=emb, return_dict=False)[0]
        holder["bias"] = None
    return float((full - compact).abs().max())


# -- shared by the training stages ------------------------------------------------------------------
def save_atomic(obj, path: Path) -> None:
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def cosine_lr(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(total - warmup, 1)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))
