"""A long video through decode, filter and encode without any worker holding it whole.

A minute at 544x960 is about 2.2 GB of uint8 frames and 9 GB as the VAE's float output; a row of a long video
(more than one segment, stages/long_video.py) therefore never carries its frames:
- decode (`decode_to_chunks`): the latents go through the VAE one latent frame at a time with its causal cache
  (as `AutoencoderKLWan._decode` does, without concatenating the output), and the uint8 frames are written, one
  segment's frames per object, to `<segment folder>/frames/<k>.npy`. The row carries their URIs
  (`frame_chunks`) and each segment's frame range (`segment_frames`).
- filter (`stream_metrics`): reads one chunk at a time; every metric of stages/quality.py per segment
  (`segment_<k>/<metric>` in the record's metrics) and overall (frame-weighted means; scene cuts summed, with
  each boundary between segments checked too; a storyboard's shot boundaries are expected cuts, counted apart
  as `shot_cuts`), and the perceptual hash from frames picked on the way.
- encode (`encode_stream`): reads one chunk at a time into the encoder; the poster and preview frames are picked
  on the way; the file is verified by decoding it back frame by frame; the chunks are then removed.
A worker holds one segment's frames at a time (97 frames at 544x960: 152 MB), whatever the video's length.
"""
from __future__ import annotations

import io
import math
import os
import tempfile
from fractions import Fraction

import numpy as np

from stages.storage import filesystem, join, put_atomic, read_bytes, remove


def is_streamed(r: dict) -> bool:
    """A row made in more than one window (a long video, a storyboard): its frames go through storage, a segment
    at a time."""
    base = r.get("base_num_frames")
    return bool(base) and bool(r.get("params_hash")) and (r["num_frames"] > base or len(r.get("shots") or []) > 1)


def segment_frames(r: dict, temporal: int = 4) -> list[tuple[int, int]]:
    """(first, end) frame of each segment of a row: one per window, the frames that window added."""
    from stages.long_video import shot_latents, shot_ranges, windows_for

    shots = r.get("shots")
    per_shot = shot_latents([s["duration_s"] for s in shots], r["fps"], temporal) if shots else None
    windows = windows_for(r["num_frames"], r["base_num_frames"], r["overlap_history"], per_shot, temporal)
    return shot_ranges([new for _, new, _ in windows], temporal)


def wan_frame_chunks(vae, latents: np.ndarray):
    """uint8 frames (t, H, W, 3) of normalized Wan latents (C, T', H', W'), one latent frame at a time through
    the VAE's causal cache: the same frames as `vae.decode` (tested), without its whole-video output."""
    import torch
    from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

    from stages.families.base import video_to_frames

    p = next(vae.parameters())
    c = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean, device=p.device).view(1, c, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std, device=p.device).view(1, c, 1, 1, 1)
    with torch.no_grad():
        vae.clear_cache()
        try:
            for i in range(latents.shape[1]):
                z = torch.from_numpy(latents[:, i:i + 1]).unsqueeze(0).to(p.device, torch.float32) * std + mean
                vae._conv_idx = [0]
                out = vae.decoder(vae.post_quant_conv(z.to(p.dtype)), feat_cache=vae._feat_map,
                                  feat_idx=vae._conv_idx, first_chunk=i == 0)
                if vae.config.patch_size is not None:
                    out = unpatchify(out, patch_size=vae.config.patch_size)
                yield video_to_frames(torch.clamp(out, -1.0, 1.0)[0])
        finally:
            vae.clear_cache()


def stream_decode(family, vae, r: dict, latents: np.ndarray, ctx) -> tuple[list[str], bool]:
    """Decode a streamed row's latents into chunk objects beside its segments; sets `segment_frames` on the row.
    Returns the chunk URIs and whether every value was finite."""
    from stages.long_video import SegmentStore

    if family.vae_class != "AutoencoderKLWan":
        raise ValueError(f"streamed decoding needs Wan's causal VAE; family '{family.name}' has {family.vae_class}")
    bounds = segment_frames(r, family.temporal_stride)
    r["segment_frames"] = [list(b) for b in bounds]
    store = SegmentStore(ctx.output, r["id"], r["variant"], r["params_hash"], ctx.storage_options)
    return decode_to_chunks(vae, latents, bounds, store.fs, store.folder)


def decode_to_chunks(vae, latents: np.ndarray, bounds: list[tuple], fs, root: str) -> tuple[list[str], bool]:
    """Decode `latents` a latent frame at a time; write the frames of each (first, end) range as one object
    `<root>/frames/<k>.npy` as soon as it is complete."""
    uris, pending, done, finite = [], [], 0, True
    for frames, ok in wan_frame_chunks(vae, latents):
        finite &= ok
        pending.append(frames)
        done += len(frames)
        while len(uris) < len(bounds) and done >= bounds[len(uris)][1]:
            first, end = bounds[len(uris)]
            block = np.concatenate(pending)
            start = done - len(block)
            chunk, rest = block[first - start:end - start], block[end - start:]
            buf = io.BytesIO()
            np.save(buf, chunk)
            path = join(root, "frames", f"{len(uris):04d}.npy")
            put_atomic(fs, path, buf.getvalue())
            uris.append(fs.unstrip_protocol(path))
            pending = [rest] if len(rest) else []
    return uris, finite


def read_chunk(uri: str, storage_options: dict | None) -> np.ndarray:
    fs, path = filesystem(uri, storage_options)
    return np.load(io.BytesIO(read_bytes(fs, path)))


def segment_prompt(r: dict, first: int, end: int) -> str:
    """The prompt frames [first, end) were made from: a storyboard's shot that holds most of them, or the row's."""
    shots = [s for s in (r.get("shots") or []) if s.get("first_frame") is not None]
    if shots:
        shot = max(shots, key=lambda s: min(end, s["end_frame"]) - max(first, s["first_frame"]))
        return shot.get("expanded_prompt") or shot["prompt"]
    return r.get("expanded_prompt") or r["prompt"]


def stream_metrics(r: dict, black_luma: float, storage_options: dict | None,
                   extra=None) -> tuple[dict, str, list[int]]:
    """Metrics per segment and overall, the perceptual hash, and the frames where cuts start, read a chunk at a
    time. A cut between two segments is looked for on the pair of frames that straddles them. `extra(first,
    end, frames)` adds metrics of its own per segment (the CLIP score); their overall value is the mean
    weighted by frames, like the others'."""
    from stages.quality import (ANALYSIS_WIDTH, PHASH_FRAMES, clip_phash, cut_frames, downscale, frame_metrics,
                                grey)

    n = r["num_frames"]
    picks = set(np.linspace(0, n - 1, PHASH_FRAMES).round().astype(int).tolist())
    metrics, per, weights, cuts, picked, last = {}, [], [], [], {}, None
    for k, (uri, (first, end)) in enumerate(zip(r["frame_chunks"], r["segment_frames"])):
        frames = read_chunk(uri, storage_options)
        m, _, seg_cuts = frame_metrics(frames, black_luma)
        if extra is not None:
            m.update(extra(first, end, frames))
        per.append(m)
        weights.append(len(frames))
        metrics.update({f"segment_{k}/{name}": v for name, v in m.items()})
        cuts += [first + c for c in seg_cuts]
        y = grey(frames)
        if last is not None:  # the boundary: the last frame before it and the first two after it
            pair = downscale(np.stack([last, *y[:2]]), ANALYSIS_WIDTH)
            if 1 in cut_frames(pair) and first not in cuts:
                cuts.append(first)
        last = y[-1].copy()  # copies: a view would keep the chunk's grey frames alive
        for i in picks:
            if first <= i < end:
                picked[i] = y[i - first].copy()
    w = np.array(weights, dtype=float)
    for name in per[0]:
        metrics[name] = float(np.dot([m[name] for m in per], w) / w.sum())
    # A storyboard's shot boundaries are expected cuts (within one latent frame: the VAE decodes 4 frames from
    # each); a cut anywhere else still counts.
    starts = [s["first_frame"] for s in (r.get("shots") or [])[1:]]
    at_shot = [c for c in cuts if any(abs(c - b) <= 4 for b in starts)]
    cuts = sorted(c for c in cuts if c not in at_shot)
    metrics["scene_cuts"] = float(len(cuts))
    if starts:
        metrics["shot_cuts"] = float(len(at_shot))
    return metrics, clip_phash(np.stack([picked[i] for i in sorted(picked)])), cuts


def encode_stream(r: dict, options, metadata: dict, storage_options: dict | None) -> dict:
    """The video, poster and preview of a streamed row, as the fields EncodeStage sets; chunks read one at a time
    and removed once the file is verified."""
    import av
    import cv2

    from stages.codecs import CODECS, coded_size, encode_poster, encode_preview, encoder_options, verify_video

    n, fps = r["num_frames"], r["fps"]
    step = max(1, math.ceil(n / options.preview_frames))
    poster_at, previews, poster = n // 2, [], None
    encoder, fmt, ext = CODECS[options.codec]
    with tempfile.TemporaryDirectory(prefix="rushes-encode-") as tmp:
        path = os.path.join(tmp, f"video.{ext}")
        container_options = {"movflags": "+faststart+use_metadata_tags"} if fmt == "mp4" else {}
        with av.open(path, mode="w", format=fmt, options=container_options) as container:
            for k, v in metadata.items():
                container.metadata[k] = str(v)
            stream = container.add_stream(encoder, rate=Fraction(fps))
            size = None
            for uri, (first, _) in zip(r["frame_chunks"], r["segment_frames"]):
                frames = read_chunk(uri, storage_options)
                if size is None:
                    h, w = frames.shape[1:3]
                    size = coded_size(options.codec, h, w)
                    stream.width, stream.height, stream.pix_fmt = size[1], size[0], "yuv420p"
                    stream.options = encoder_options(options.codec, options.crf, options.preset)
                for i, frame in enumerate(frames, start=first):
                    # copies: a view would keep its whole chunk alive to the end
                    if i == poster_at:
                        poster = frame.copy()
                    if i % step == 0:
                        previews.append(frame.copy())
                    if size != (h, w):
                        frame = cv2.copyMakeBorder(frame, 0, size[0] - h, 0, size[1] - w, cv2.BORDER_REPLICATE)
                    for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), "rgb24")):
                        container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        with open(path, "rb") as f:
            video = f.read()
    problem = verify_video(video, n, size[0], size[1], fps)
    if problem:
        raise StreamVerifyError(problem)
    for uri in r["frame_chunks"]:
        fs, p = filesystem(uri, storage_options)
        remove(fs, p)
    return dict(video_bytes=video, video_ext=ext, codec=options.codec, resolution=f"{size[1]}x{size[0]}",
                duration_s=n / fps, poster_bytes=encode_poster(poster[None], options.poster_quality),
                # the picked frames are every step-th: the preview plays them at the same real-time speed
                preview_bytes=encode_preview(np.stack(previews), fps / step, options.preview_width,
                                             options.preview_frames))


class StreamVerifyError(Exception):
    """The encoded file does not decode back to what was encoded."""
