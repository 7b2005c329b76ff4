"""The toy models' configurations, the word-level tokenizers, and the prompt encoding that matches
`WanPipeline.encode_prompt` (prompt_clean, tokenizer, UMT5, embeddings zeroed past each prompt's length and
padded with zeros to 512 tokens)."""
from __future__ import annotations

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


def build_clip_tokenizer():
    """CLIP-style: <|startoftext|> words <|endoftext|>, padded with <|endoftext|> (CLIP pools at the first one)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<|startoftext|>", "<|endoftext|>", *words()])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|endoftext|>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>", special_tokens=[("<|startoftext|>", 0), ("<|endoftext|>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>", model_max_length=77)


def new_vae():
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(**VAE_KW)


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
