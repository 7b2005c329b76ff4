"""Prompt alignment: a CLIP text-video score for the filter stage.

In: a prompt and uint8 frames (T, H, W, 3). Out: `ClipScorer.score()`, the CLIPScore convention of
torchmetrics: 100 x max(cosine, 0) between the prompt's text embedding and the mean, over CLIP_FRAMES
evenly spaced frames, of each frame's cosine; 0 (unrelated) .. 100 (identical direction).
`cosines()` gives the raw per-frame cosines.

A checkpoint may instead say, in a `rushes_clip.json` file in its folder, that it was trained on tiled
images of several frames (e.g. `{"frames": 4, "layout": "grid"}`: 4 evenly spaced frames in a 2x2 grid,
row-major, earliest top-left), because a single frame cannot show motion. Its score is then
100 x max(cosine, 0) between the prompt's text embedding and the embedding of that one tiled image
(`cosines()` returns that single cosine). Or `{"frames": 4, "layout": "channels"}`: the evenly spaced frames
each go through the image processor and are concatenated along the channel axis, earliest first, into one
input of 3 x frames channels (the vision tower's `num_channels`). `builtin:toy-clip` (trained on the toy world)
is such a model.

The model is any transformers CLIP checkpoint (`CLIPModel`, a tokenizer and an image processor) by local
folder, hub id or fsspec URI (`s3://...`, copied once per node by stages/models/staging.py), or
`builtin:tiny-clip`: a tiny CLIP built offline from a config with a fixed seed and a
BPE tokenizer trained with `tokenizers`, saved once with `save_pretrained` under
`$RUSHES_CACHE/builtin/` and loaded back with `from_pretrained`, like the tiny video model. Its weights
are random: its scores are deterministic but say nothing about alignment.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from stages.models.builtin import build_clip_tokenizer
from stages.models.checkpoints import resolve_builtin
from stages.models.devices import quiet_loading
from stages.models.staging import is_remote, stage

CLIP_FRAMES = 8
# Bump when the recipe changes, so a stale cached copy is never used.
BUILTIN_CLIPS = {"tiny-clip": "tiny-clip-v1", "toy-clip": "toy-clip"}  # toy-clip: trained, shipped (stages/models/weights)


def build_tiny_clip(target: Path) -> None:
    """Build a tiny random CLIP with a fixed seed and save model, tokenizer and image processor at `target`."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    quiet_loading()
    tokenizer = build_clip_tokenizer()
    config = CLIPConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 77,
                     "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1},
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 2, "num_attention_heads": 4},
        projection_dim=32)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(target)
    tokenizer.save_pretrained(target)
    # Written as JSON rather than through CLIPImageProcessor, whose class varies with torchvision's presence.
    (Path(target) / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "do_convert_rgb": True, "do_resize": True,
        "size": {"shortest_edge": 32}, "resample": 3, "do_center_crop": True,
        "crop_size": {"height": 32, "width": 32},
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]},
        indent=2))


def resolve_clip_path(path: str, storage_options: dict | None = None) -> str:
    """A path that `from_pretrained` accepts; builds the builtin CLIP into the cache on first use, and copies one
    in object storage into this node's cache (once per node)."""
    if is_remote(path):
        return stage(path, storage_options)
    return resolve_builtin(path, BUILTIN_CLIPS, build_tiny_clip, "filter.clip_model")


LAYOUT_FILE = "rushes_clip.json"


def read_layout(local: str) -> dict | None:
    """The checkpoint's frame layout (`rushes_clip.json`), or None: it scores frames one by one. Read from a
    local folder, or from a hub id's cached snapshot."""
    folder = Path(local)
    if folder.is_dir():
        f = folder / LAYOUT_FILE
        return json.loads(f.read_text()) if f.is_file() else None
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(local, LAYOUT_FILE, local_files_only=True)).read_text())
    except Exception:  # not in the cache, or no such file: per-frame scoring
        return None


LAYOUTS = ("grid", "channels")


def check_layout(layout: dict, num_channels: int) -> None:
    """A clear error for a layout this scorer cannot build, or one that does not fit the vision tower."""
    kind = layout.get("layout", "grid")
    if kind not in LAYOUTS:
        raise ValueError(f"{LAYOUT_FILE}: unknown layout {kind!r} (known: {', '.join(LAYOUTS)})")
    want = 3 * int(layout.get("frames", 4)) if kind == "channels" else 3
    if want != num_channels:
        raise ValueError(f"{LAYOUT_FILE}: layout {kind!r} of {layout.get('frames', 4)} frames makes {want} channels, "
                         f"but the vision tower takes {num_channels} (vision_config.num_channels)")


def frame_indices(n: int, k: int) -> np.ndarray:
    """k evenly spaced frame indices of an n-frame clip, first and last included."""
    return np.linspace(0, n - 1, num=k).round().astype(int)


def tile_frames(frames: np.ndarray, layout: dict) -> np.ndarray:
    """One image of `layout["frames"]` evenly spaced frames (fewer if the clip is shorter), in a grid of
    `rows` x `cols` (default: as square as possible), row-major, the earliest frame top-left; empty cells
    are black."""
    k = int(layout.get("frames", 4))
    cols = int(layout.get("cols") or int(np.ceil(np.sqrt(k))))
    rows = int(layout.get("rows") or int(np.ceil(k / cols)))
    idx = frame_indices(len(frames), k)
    _, h, w, c = frames.shape
    out = np.zeros((rows * h, cols * w, c), frames.dtype)
    for j, i in enumerate(idx[:rows * cols]):
        r, q = divmod(j, cols)
        out[r * h:(r + 1) * h, q * w:(q + 1) * w] = frames[i]
    return out


class ClipScorer:
    def __init__(self, path: str, device: str = "cpu", storage_options: dict | None = None):
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        quiet_loading()
        local = resolve_clip_path(path, storage_options)
        self.device = device
        self.model = CLIPModel.from_pretrained(local).to(device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(local)
        self.processor = AutoImageProcessor.from_pretrained(local)
        self.layout = read_layout(local)
        if self.layout is not None:
            check_layout(self.layout, self.model.config.vision_config.num_channels)

    def cosines(self, prompt: str, frames: np.ndarray) -> np.ndarray:
        """Cosine similarity of the prompt with each of CLIP_FRAMES evenly spaced frames; with a frame layout
        (`rushes_clip.json`), the one cosine with the tiled or channel-stacked image."""
        import torch

        text = self.tokenizer([prompt], padding=True, truncation=True, return_tensors="pt")
        kind = None if self.layout is None else self.layout.get("layout", "grid")
        if kind == "grid":
            images = [tile_frames(frames, self.layout)]
        elif kind == "channels":
            images = [frames[i] for i in frame_indices(len(frames), int(self.layout.get("frames", 4)))]
        else:
            images = [frames[i] for i in frame_indices(len(frames), min(CLIP_FRAMES, len(frames)))]
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
        if kind == "channels":  # (k, 3, S, S) -> (1, 3k, S, S), earliest frame first
            pixels = pixels.reshape(1, -1, *pixels.shape[2:])
        with torch.inference_mode():
            # The joint forward returns normalised projections in every transformers version.
            out = self.model(input_ids=text["input_ids"].to(self.device),
                             attention_mask=text["attention_mask"].to(self.device),
                             pixel_values=pixels.to(self.device))
        return (out.image_embeds @ out.text_embeds[0]).float().cpu().numpy()

    def score(self, prompt: str, frames: np.ndarray) -> float:
        return 100.0 * max(float(self.cosines(prompt, frames).mean()), 0.0)
