"""Recaptioning a row that starts from an image: the instructions, the image in the chat, and the tiny built-in
vision-language model.

In: a row's prompt and its conditioning image(s), fitted as the video will see them (stages/media/conditioning.py).
Out: the chat a rewriter is given. A model that takes images (a local vision-language model, or an
OpenAI-compatible endpoint serving one) is shown the image and told to describe what moves and how the camera
moves, not what the image already fixes; a text-only model gets the same instruction without the image, and the
record says so (`expand_image`, decided while planning: `image_status`).

- `takes_images(path)`: whether a local model folder (or a hub id already in the local cache) is a
  vision-language model, read from its config.json without loading it;
- `builtin:tiny-llava`: a tiny random-weight LLaVA (a tiny CLIP vision tower and a tiny Qwen2), built offline with
  a fixed seed, with a chat template that takes image parts; like tiny-qwen, its text is gibberish.
"""
from __future__ import annotations

import base64
import functools
import io
import json
from pathlib import Path

from stages.models.builtin import build_tokenizer

IMAGE_NOTES = {
    "en": """The video starts from the image given with the idea{last}. The image already fixes how the subject looks, the \
setting, the composition, the colours and the light: do not describe them again and change none of them. \
Describe what happens from that first frame on: what moves and how, and how the camera moves.""",
    "zh": """视频从随想法给出的图像开始{last}。图像已经确定了主体的外观、场景、构图、色彩和光线：不要再描述，也不要改变它们。\
请描述从第一帧开始发生的事情：什么在动、如何运动，以及镜头如何运动。""",
}
LAST = {"en": " and ends on the second image", "zh": "，并以第二张图像结束"}
UNSEEN_NOTES = {
    "en": """The video starts from a picture that you are not shown, which already fixes how the subject looks, the setting \
and the light. Describe what moves and how, and how the camera moves; keep what the idea says about their look.""",
    "zh": """视频从一张你看不到的图像开始，它已经确定了主体的外观、场景和光线。请描述什么在动、如何运动，以及镜头如何运动；\
保留想法中关于外观的描述。""",
}
VLM_CONFIG_KEYS = ("vision_config", "vision_tower", "visual")  # a transformers config with a vision tower


def image_note(language: str, shown: bool, images: int = 1) -> str:
    """What the instructions add for a row with an image: shown (`images` of them: first, and last) or not."""
    if not shown:
        return UNSEEN_NOTES[language]
    return IMAGE_NOTES[language].format(last=LAST[language] if images > 1 else "")


@functools.lru_cache(maxsize=16)  # asked for every row with an image while planning
def takes_images(local: str, revision: str | None = None) -> bool:
    """Whether the model at `local` (a folder, or a hub id in the local cache) takes images: its config.json has a
    vision tower. A hub id that is not cached here counts as text-only (download it first to show it images)."""
    folder = Path(local)
    if not folder.is_dir():
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(local, revision=revision, local_files_only=True,
                                            allow_patterns=["config.json"]))
        except Exception:  # noqa: BLE001 - not cached here
            return False
    try:
        return config_takes_images(json.loads((folder / "config.json").read_text()))
    except (OSError, ValueError):
        return False


def config_takes_images(config: dict) -> bool:
    """Whether a model's config.json (as a dict) has a vision tower."""
    return any(k in config for k in VLM_CONFIG_KEYS)


def data_uri(img, quality: int = 90) -> str:
    """An image as a JPEG data URI, the form OpenAI-compatible endpoints take in an `image_url` part."""
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def as_parts(chat: list[dict], images: list, form: str) -> list[dict]:
    """`chat` with every message's content as a list of parts (what vision-language chat templates read) and
    `images` put before the text of the last user message: `{"type": "image"}` placeholders for a local
    processor (`form="local"`, the images go to it beside the text) or `image_url` data URIs (`form="openai"`)."""
    out = [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]} for m in chat]
    if form == "openai":
        pictures = [{"type": "image_url", "image_url": {"url": data_uri(img)}} for img in images]
    else:
        pictures = [{"type": "image"} for _ in images]
    out[-1]["content"] = pictures + out[-1]["content"]
    return out


def build_tiny_llava(target: Path) -> None:
    """A tiny LLaVA chat model with a fixed seed, in transformers layout at `target`: a 2-layer CLIP vision tower
    (32x32 images, 8x8 patches: 16 image tokens), a 2-layer Qwen2, and the offline BPE tokenizer with `<image>`.
    Its end-of-turn row is set along the mean hidden state, as tiny-qwen's is, so that rewrites end."""
    import torch
    from tokenizers import processors
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration,
                              LlavaProcessor, Qwen2Config)

    tok = build_tokenizer()
    tok.backend_tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)  # no </s> appended
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<image>"]})
    tok.eos_token = "<|im_end|>"
    tok.padding_side = "left"
    template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}"
                "{{ m['content'] }}{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n"
                "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tok, patch_size=8, vision_feature_select_strategy="default", chat_template=template,
        image_token="<image>", num_additional_image_tokens=1)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                                       image_size=32, patch_size=8, projection_dim=32),
        text_config=Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                                tie_word_embeddings=False, bos_token_id=None, eos_token_id=tok.eos_token_id,
                                pad_token_id=tok.pad_token_id),
        image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_select_strategy="default",
        vision_feature_layer=-1, projector_hidden_act="gelu"))
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(3, len(tok) - 3, (8, 60), generator=g)
        hidden = model.model.language_model(input_ids=ids).last_hidden_state
        mean = hidden.reshape(-1, hidden.shape[-1]).mean(0)
        model.lm_head.weight[tok.eos_token_id] = 0.5 * mean / mean.dot(mean)
    model.generation_config.update(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, do_sample=True,
                                   temperature=0.7, top_p=0.9)
    model.save_pretrained(target)
    processor.save_pretrained(target)
