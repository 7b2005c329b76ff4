"""The interface every model family implements, and the record a family samples from.

A family is a class (its methods are classmethods: a family holds no state; the pipeline and the VAE it
loads are passed back to it). `FamilyRules` and `DiffusersFamily` (stages/models/families/base.py) implement
most of it; a new family subclasses one of them. tests/stages/test_families.py checks every family against
`ModelFamily`, so nothing in the stages probes a family with `hasattr`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from stages.common.variant import SamplingParams
from stages.long_video.segments import SegmentStore


@dataclass
class VariantInput:
    """One variant's own inputs to a pipeline call: its prompt as the encoder reads it, its negative prompt and
    seed; for a family that extends videos, its segment store (resume) and a storyboard's shots; for a conditioned
    row, its first and last image (RGB PIL images at the variant's size), the frames of the clip it continues
    and the conditioning strength (stages/media/conditioning.py)."""

    prompt: str
    negative_prompt: str
    seed: int
    segments: SegmentStore | None = None
    shots: list[dict] | None = None
    image: Any = None
    last_image: Any = None
    video: list | None = None
    strength: float | None = None

    @property
    def conditioned(self) -> bool:
        return self.image is not None or self.last_image is not None or self.video is not None


@runtime_checkable
class ModelFamily(Protocol):
    name: ClassVar[str]
    temporal_stride: ClassVar[int]  # frames must be stride*k+1
    extends: ClassVar[bool]  # makes rows longer than its window, window by window
    transformers: ClassVar[tuple[str, ...]]  # the pipeline components that denoise (speed options apply there)
    decode_uses_seed: ClassVar[bool]
    tensor_format: ClassVar[str]
    guidance_distilled: ClassVar[bool]
    max_sequence_length: ClassVar[int | None]  # text tokens the encoder reads; None: no text encoder
    transformer_class: ClassVar[str | None]  # the denoiser's diffusers class; None: no model
    masks_attention: ClassVar[bool]  # its denoiser passes an attention mask (some attention backends refuse one)
    dispatches_attention: ClassVar[bool]  # its attention honours diffusers' set_attention_backend
    conditioning_strength: ClassVar[bool]  # takes the job's conditioning.strength

    # rules, without loading anything
    def recommended(self, path: str | None) -> dict: ...
    def spatial_multiple_of(self, path: str | None) -> int: ...
    def window_frames(self, path: str | None) -> int | None: ...
    def check_row(self, row: dict, path: str | None) -> str | None: ...
    def negative_pass(self, params: SamplingParams) -> bool: ...
    def conditionings(self, path: str | None) -> frozenset[str]: ...  # the manifest columns image, last_image,
    def required_conditionings(self, path: str | None) -> frozenset[str]: ...  # video it takes; those it needs
    def video_tail(self, row: dict, path: str | None) -> int | None: ...  # the clip's last frames it continues from
    def free_to_sample(self, model: Any) -> bool: ...  # no model and no simulated GPU time (null)

    # sampling, in the sample stage's worker
    def load_pipeline(self, path: str, device: str, model: Any, speed: Any = None,
                      batch_invariant: bool = True) -> Any: ...
    def tokenizer(self, pipe: Any) -> Any: ...
    def sample(self, pipe: Any, inputs: list[VariantInput], params: SamplingParams) -> np.ndarray: ...

    # decoding, in the decode stage's worker
    def load_vae(self, path: str, dtype: str, device: str, revision: str | None = None,
                 model: Any = None) -> Any: ...  # model: the job's `model:` section (the null family's simulate)
    def decode(self, vae: Any, latents: np.ndarray, seed: int = 0) -> tuple[np.ndarray, bool]: ...
    def decode_chunks(self, vae: Any, latents: np.ndarray) -> Any: ...
