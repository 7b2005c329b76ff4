"""A long video through decode, filter and encode without any worker holding it whole.

A minute at 544x960 is about 2.2 GB of uint8 frames and 9 GB as the VAE's float output; a row of a long video
(more than one segment, stages/long_video/windows.py) therefore never carries its frames:
- decode (`write_chunks`): the latents go through the VAE one latent frame at a time with its causal cache
  (the family's `decode_chunks`), and the uint8 frames are written, one segment's frames per object, to
  `<segment folder>/frames/<k>.npy`. The row's `frames` is then a `FrameChunks` (stages/media/frames.py): their
  URIs and each segment's frame range.
- filter (`stream_metrics`): reads one chunk at a time; every metric of stages/media/quality.py per segment
  (`segment_<k>/<metric>` in the record's metrics) and overall (frame-weighted means; scene cuts summed, with
  each boundary between segments checked too; a storyboard's shot boundaries are expected cuts, counted apart
  as `shot_cuts`), and the perceptual hash from frames picked on the way.
- encode (`encode_stream`): reads one chunk at a time into the encoder; the poster and preview frames are picked
  on the way; the file is verified by decoding it back frame by frame; the chunks are then removed.
A worker holds one segment's frames at a time (97 frames at 544x960: 152 MB), whatever the video's length.
"""
from __future__ import annotations

import math
import os
import tempfile
from fractions import Fraction

import numpy as np

from stages.common.storage import join
from stages.media.codecs import (CODECS, VerifyError, coded_size, encode_poster, encode_preview, encoder_options,
                                 verify_video)
from stages.media.frames import FrameChunks, write_chunk
from stages.media.quality import ANALYSIS_WIDTH, PHASH_FRAMES, clip_phash, cut_frames, downscale, frame_metrics, grey


def write_chunks(chunks, bounds: list[tuple[int, int]], fs, root: str,
                 storage_options: dict | None = None) -> tuple[FrameChunks, bool]:
    """Frames from `chunks` (an iterator of (uint8 frames, finite), a few frames at a time: a causal VAE's
    output) written as one object `<root>/frames/<k>.npy` per (first, end) range of `bounds`, each as soon as it
    is complete. Returns the frames in storage and whether every value was finite."""
    uris, pending, done, finite = [], [], 0, True
    for frames, ok in chunks:
        finite &= ok
        pending.append(frames)
        done += len(frames)
        while len(uris) < len(bounds) and done >= bounds[len(uris)][1]:
            first, end = bounds[len(uris)]
            block = np.concatenate(pending)
            start = done - len(block)
            chunk, rest = block[first - start:end - start], block[end - start:]
            uris.append(write_chunk(fs, join(root, "frames", f"{len(uris):04d}.npy"), chunk))
            pending = [rest] if len(rest) else []
    return FrameChunks(uris, bounds, storage_options), finite


def segment_prompt(r: dict, first: int, end: int) -> str:
    """The prompt frames [first, end) were made from: a storyboard's shot that holds most of them, or the row's."""
    shots = [s for s in (r.get("shots") or []) if s.get("first_frame") is not None]
    if shots:
        shot = max(shots, key=lambda s: min(end, s["end_frame"]) - max(first, s["first_frame"]))
        return shot.get("expanded_prompt") or shot["prompt"]
    return r.get("expanded_prompt") or r["prompt"]


def stream_metrics(r: dict, video: FrameChunks, black_luma: float, extra=None) -> tuple[dict, str, list[int]]:
    """Metrics per segment and overall, the perceptual hash, and the frames where cuts start, read a chunk at a
    time. A cut between two segments is looked for on the pair of frames that straddles them. `extra(first,
    end, frames)` adds metrics of its own per segment (the CLIP score); their overall value is the mean
    weighted by frames, like the others'."""
    n = r["num_frames"]
    picks = set(np.linspace(0, n - 1, PHASH_FRAMES).round().astype(int).tolist())
    metrics, per, weights, cuts, picked, last = {}, [], [], [], {}, None
    for k, ((first, frames), (_, end)) in enumerate(zip(video.chunks(), video.bounds)):
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


def encode_stream(r: dict, video_frames: FrameChunks, options, metadata: dict) -> dict:
    """The video, poster and preview of a streamed row, as the fields EncodeStage sets; chunks read one at a time
    and removed once the file is verified."""
    import av
    import cv2

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
            for first, frames in video_frames.chunks():
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
        raise VerifyError(problem)
    video_frames.remove()
    return dict(video_bytes=video, video_ext=ext, codec=options.codec, resolution=f"{size[1]}x{size[0]}",
                duration_s=n / fps, poster_bytes=encode_poster(poster[None], options.poster_quality),
                # the picked frames are every step-th: the preview plays them at the same real-time speed
                preview_bytes=encode_preview(np.stack(previews), fps / step, options.preview_width,
                                             options.preview_frames))
