"""The toy world: its grammar, a seeded clip renderer, a prompt parser, and plain image analysis of clips.

A clip is (T, H, W, 3) uint8, T=17 frames at 8 fps, 64x64 by default. One or two flat-coloured shapes
(circle, square, triangle) move left/right/up/down in a straight line, or stay still, on a black or gray
background. Two objects in one clip always have different colours and never overlap.

`analyze(frames, prompt)` measures, with no learned model, each object's colour, shape and motion, and
`judge(...)` compares them with what the prompt asked for.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

import cv2
import numpy as np

COLOURS = {"red": (225, 35, 35), "green": (35, 195, 45), "blue": (45, 75, 235), "yellow": (240, 215, 30),
           "white": (245, 245, 245)}
SHAPES = ("circle", "square", "triangle")
MOTIONS = ("left", "right", "up", "down", "still")
BACKGROUNDS = {"black": (0, 0, 0), "gray": (120, 120, 120)}
VECTORS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "still": (0, 0)}

FRAMES = 17
FPS = 8
SIZE = 64


@dataclass(frozen=True)
class Obj:
    colour: str
    shape: str
    motion: str


# -- grammar ----------------------------------------------------------------------------------------------
_VERB = {"left": "moves left", "right": "moves right", "up": "moves up", "down": "moves down", "still": "stays still"}
_ING = {"left": "moving left", "right": "moving right", "up": "moving up", "down": "moving down",
        "still": "staying still"}


def _phrase(o: Obj, ing: bool = False) -> str:
    return f"a {o.colour} {o.shape} {(_ING if ing else _VERB)[o.motion]}"


def canonical_prompt(objs: list[Obj], bg: str) -> str:
    """The issue's canonical form: `a red circle moves left [and a ...] on a black background`."""
    return " and ".join(_phrase(o) for o in objs) + f" on a {bg} background"


def phrase_prompt(objs: list[Obj], bg: str, style: int) -> str:
    """One of several phrasings (0: canonical)."""
    if style == 0:
        return canonical_prompt(objs, bg)
    if style == 1:
        return " and ".join(_phrase(o, ing=True) for o in objs) + f" on {bg}"
    if style == 2:
        return f"on a {bg} background, " + " and ".join(_phrase(o) for o in objs)
    if style == 3:
        return " and ".join(_phrase(o, ing=True) for o in objs) + f" on a {bg} background"
    return " and ".join(_phrase(o) for o in objs) + f", {bg} background"


N_STYLES = 5
VOCAB = sorted(set(COLOURS) | set(SHAPES) | set(BACKGROUNDS) |
               {"a", "on", "and", "background", "moves", "moving", "stays", "staying", "still", "left", "right",
                "up", "down", ","})

_OBJ_RE = re.compile(r"\b(red|green|blue|yellow|white)\s+(circle|square|triangle)\s+"
                     r"(?:(?:moves|moving)\s+(left|right|up|down)|(?:stays|staying)\s+(still))")


def parse_prompt(prompt: str) -> tuple[list[Obj], str | None]:
    """The objects and the background a prompt asks for (background None when it names none)."""
    p = prompt.lower()
    objs = [Obj(m.group(1), m.group(2), m.group(3) or m.group(4)) for m in _OBJ_RE.finditer(p)]
    bg = next((b for b in BACKGROUNDS if re.search(rf"\b{b}\b", p)), None)
    return objs, bg


def random_scene(rng: np.random.Generator, n_objects: int | None = None) -> tuple[list[Obj], str]:
    n = n_objects or (1 if rng.random() < 0.5 else 2)
    colours = rng.choice(list(COLOURS), size=n, replace=False)
    objs = [Obj(str(c), str(rng.choice(SHAPES)), str(rng.choice(MOTIONS))) for c in colours]
    return objs, str(rng.choice(list(BACKGROUNDS)))


# -- rendering --------------------------------------------------------------------------------------------
SS = 4  # supersampling factor for anti-aliasing


def _draw(canvas: np.ndarray, shape: str, cx: float, cy: float, r: float, colour) -> None:
    """Draw on the supersampled canvas; (cx, cy, r) in output pixels."""
    s = SS
    if shape == "circle":
        cv2.circle(canvas, (int(round(cx * s)), int(round(cy * s))), int(round(r * s)), colour, -1, cv2.LINE_8)
        return
    if shape == "square":
        h = r * 0.88  # a square of about the circle's area
        pts = [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    else:  # triangle pointing up
        pts = [(cx, cy - r), (cx + r * 1.05, cy + r * 0.85), (cx - r * 1.05, cy + r * 0.85)]
    poly = np.array([[int(round(x * s)), int(round(y * s))] for x, y in pts], np.int32)
    cv2.fillPoly(canvas, [poly], colour, cv2.LINE_8)


@dataclass
class Track:
    obj: Obj
    r: float
    x0: float
    y0: float
    dx: float
    dy: float

    def at(self, t: int, n: int) -> tuple[float, float]:
        f = t / (n - 1)
        return self.x0 + f * self.dx, self.y0 + f * self.dy


def _place(rng, obj: Obj, size: int, r: float) -> Track:
    dist = rng.uniform(16, 28) * size / 64
    vx, vy = VECTORS[obj.motion]
    dx, dy = vx * dist, vy * dist
    m = r + 2
    xs = (m - min(dx, 0), size - m - max(dx, 0))
    ys = (m - min(dy, 0), size - m - max(dy, 0))
    return Track(obj, r, rng.uniform(*xs), rng.uniform(*ys), dx, dy)


def _clear(a: Track, b: Track, n: int) -> bool:
    for t in range(n):
        (xa, ya), (xb, yb) = a.at(t, n), b.at(t, n)
        if np.hypot(xa - xb, ya - yb) < (a.r + b.r) * 1.15 + 3:
            return False
    return True


def scene_tracks(rng: np.random.Generator, objs: list[Obj], size: int = SIZE, frames: int = FRAMES) -> list[Track]:
    for _ in range(200):
        lo, hi = (7.0, 11.0) if len(objs) == 1 else (6.0, 9.5)
        tracks = [_place(rng, o, size, rng.uniform(lo, hi) * size / 64) for o in objs]
        if all(_clear(a, b, frames) for a, b in itertools.combinations(tracks, 2)):
            return tracks
    raise RuntimeError("could not place objects")


def render(objs: list[Obj], bg: str, rng: np.random.Generator, size: int = SIZE, frames: int = FRAMES,
           jitter: bool = True) -> np.ndarray:
    """A clip (T, H, W, 3) uint8 of these objects on this background, with rng-drawn sizes, places, speeds."""
    tracks = scene_tracks(rng, objs, size, frames)
    bgc = np.array(BACKGROUNDS[bg], np.float64)
    if jitter:
        bgc = np.clip(bgc + rng.uniform(-8, 8), 0, 255)
    cols = []
    for tr in tracks:
        c = np.array(COLOURS[tr.obj.colour], np.float64)
        if jitter:
            c = np.clip(c + rng.uniform(-12, 12, 3), 0, 255)
        cols.append(tuple(float(v) for v in c))
    out = np.empty((frames, size, size, 3), np.uint8)
    big = np.empty((size * SS, size * SS, 3), np.float32)
    for t in range(frames):
        big[:] = bgc
        for tr, c in zip(tracks, cols):
            x, y = tr.at(t, frames)
            _draw(big, tr.obj.shape, x, y, tr.r, c)
        out[t] = np.clip(cv2.resize(big, (size, size), interpolation=cv2.INTER_AREA).round(), 0, 255)
    return out


def sample_clip(seed: int, n_objects: int | None = None, style: int | None = None, size: int = SIZE):
    """(frames, prompt, objs, bg) for one seed: the whole clip is a function of the seed."""
    rng = np.random.default_rng(seed)
    objs, bg = random_scene(rng, n_objects)
    st = int(rng.integers(N_STYLES)) if style is None else style
    return render(objs, bg, rng, size), phrase_prompt(objs, bg, st), objs, bg


# -- analysis ---------------------------------------------------------------------------------------------
_PALETTE = np.array([COLOURS[c] for c in COLOURS], np.float64)
_PALETTE_NAMES = list(COLOURS)


def _nearest_colour(rgb: np.ndarray) -> str:
    return _PALETTE_NAMES[int(np.argmin(((_PALETTE - rgb) ** 2).sum(1)))]


def background_of(frames: np.ndarray) -> tuple[np.ndarray, str]:
    """Background colour (median of all frames' border pixels) and its name (nearest of black/gray)."""
    f = frames.astype(np.float64)
    border = np.concatenate([f[:, :2].reshape(-1, 3), f[:, -2:].reshape(-1, 3), f[:, :, :2].reshape(-1, 3),
                             f[:, :, -2:].reshape(-1, 3)])
    bgc = np.median(border, axis=0)
    name = min(BACKGROUNDS, key=lambda b: ((np.array(BACKGROUNDS[b]) - bgc) ** 2).sum())
    return bgc, name


MIN_AREA = 12


def _components(frame: np.ndarray, bgc: np.ndarray, thresh: float = 55.0):
    """Foreground components of one frame, largest first: area, centroid, colour, shape features."""
    diff = np.sqrt(((frame.astype(np.float64) - bgc) ** 2).sum(-1))
    mask = (diff > thresh).astype(np.uint8)
    n, labels, stats, cents = cv2.connectedComponentsWithStats(mask, connectivity=8)
    comps = []
    for i in range(1, n):
        area = int(stats[i, cv2.CC_STAT_AREA])
        if area < MIN_AREA:
            continue
        m = labels == i
        # colour: the component's most foreground-like pixels (its core, away from anti-aliased edges)
        px = frame[m].astype(np.float64)
        d = diff[m]
        core = px[d >= np.quantile(d, 0.5)] if len(d) > 8 else px
        rgb = np.median(core, axis=0)
        comps.append(dict(area=area, cx=float(cents[i][0]), cy=float(cents[i][1]), rgb=rgb,
                          feat=_shape_features(m.astype(np.uint8))))
    comps.sort(key=lambda c: -c["area"])
    return comps


def _shape_features(mask: np.ndarray) -> tuple[float, float]:
    """(area / bounding-box area, area / minimum-enclosing-circle area) of a binary mask."""
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    c = max(contours, key=cv2.contourArea)
    area = float(mask.sum())
    x, y, w, h = cv2.boundingRect(c)
    (_, _), rad = cv2.minEnclosingCircle(c)
    return area / max(w * h, 1), area / max(np.pi * (rad + 0.5) ** 2, 1)


# prototypes of (bbox fill, enclosing-circle fill): medians measured on 200 drawn clips per shape
SHAPE_PROTOS = {"circle": (0.79, 0.90), "square": (0.99, 0.66), "triangle": (0.54, 0.46)}


def classify_shape(feats: list[tuple[float, float]]) -> str:
    f = np.median(np.array(feats), axis=0)
    return min(SHAPE_PROTOS, key=lambda s: ((np.array(SHAPE_PROTOS[s]) - f) ** 2).sum())


STILL_PX = 5.0  # displacement below which an object counts as still (drawn motion is 16-28 px)


def direction_of(dx: float, dy: float) -> str:
    if max(abs(dx), abs(dy)) < STILL_PX:
        return "still"
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def _tracks(frames: np.ndarray, bgc: np.ndarray, k: int) -> tuple[list[list], int]:
    """Up to k object tracks over the clip (each a list of (frame, component)), and the object count seen
    (median over frames of the number of sizeable components)."""
    per = [_components(f, bgc) for f in frames]
    counts = [len([c for c in cs if c["area"] >= MIN_AREA * 2]) for cs in per]
    count = int(np.median(counts))
    # seed the tracks with the k largest components of the middle frame, then follow each by nearest
    # centroid + colour, frame by frame in both directions
    mid = len(frames) // 2
    tracks = []
    for s in per[mid][:k]:
        tr = {mid: s}
        for steps in (range(mid + 1, len(frames)), range(mid - 1, -1, -1)):
            prev = s
            for t in steps:
                cands = per[t]
                if not cands:
                    continue
                cost = [np.hypot(c["cx"] - prev["cx"], c["cy"] - prev["cy"]) +
                        0.15 * np.sqrt(((c["rgb"] - prev["rgb"]) ** 2).sum()) for c in cands]
                j = int(np.argmin(cost))
                if cost[j] < 20:
                    tr[t] = cands[j]
                    prev = cands[j]
        tracks.append([(t, tr[t]) for t in sorted(tr)])
    return tracks, count


def analyze(frames: np.ndarray, prompt: str | None = None, n_objects: int | None = None) -> dict:
    """Measure a clip: background, object count, and per object (largest first) its colour, shape, motion
    direction and displacement in pixels. `n_objects` (default: the number the prompt names, else 2) is how
    many objects to track."""
    if n_objects is None:
        n_objects = (len(parse_prompt(prompt)[0]) if prompt else 0) or 2
    bgc, bg = background_of(frames)
    tracks, count = _tracks(frames, bgc, n_objects)
    objects = []
    span = len(frames) - 1
    for tr in tracks:
        ts = np.array([t for t, _ in tr], np.float64)
        xs = np.array([c["cx"] for _, c in tr])
        ys = np.array([c["cy"] for _, c in tr])
        if len(ts) >= 3:
            # displacement over the whole clip from a least-squares line through the centroid track
            dx = float(np.polyfit(ts, xs, 1)[0] * span)
            dy = float(np.polyfit(ts, ys, 1)[0] * span)
        else:
            dx = dy = 0.0
        rgb = np.median(np.array([c["rgb"] for _, c in tr]), axis=0)
        objects.append(dict(colour=_nearest_colour(rgb), rgb=[round(float(v)) for v in rgb],
                            shape=classify_shape([c["feat"] for _, c in tr]),
                            motion=direction_of(dx, dy), dx=round(dx, 1), dy=round(dy, 1),
                            displacement=round(float(np.hypot(dx, dy)), 1),
                            area=float(np.median([c["area"] for _, c in tr])), frames_seen=len(tr)))
    return dict(background=bg, background_rgb=[round(float(v)) for v in bgc], count=count, objects=objects)


def judge(analysis: dict, prompt: str) -> dict:
    """Per-attribute right/wrong of an analysis against a prompt. Prompt objects are matched to measured ones
    by the assignment that agrees on the most attributes (colour weighs most)."""
    want, bg = parse_prompt(prompt)
    got = analysis["objects"]
    best, best_score = None, -1.0
    for perm in itertools.permutations(range(len(got)), min(len(want), len(got))):
        s = sum(3 * (got[j]["colour"] == w.colour) + (got[j]["shape"] == w.shape) + (got[j]["motion"] == w.motion)
                for w, j in zip(want, perm))
        if s > best_score:
            best, best_score = perm, s
    per = []
    for i, w in enumerate(want):
        if best is None or i >= len(best):
            per.append(dict(colour=False, shape=False, motion=False))
            continue
        g = got[best[i]]
        per.append(dict(colour=g["colour"] == w.colour, shape=g["shape"] == w.shape, motion=g["motion"] == w.motion))
    for p in per:
        p["all"] = p["colour"] and p["shape"] and p["motion"]
    return dict(objects=per, background=(bg is None or analysis["background"] == bg),
                count=analysis["count"] == len(want), all=all(p["all"] for p in per) and len(per) > 0)


def all_right(judgement: dict) -> bool:
    """A video shows its prompt: every object's colour, shape and motion, no object more or fewer, the background."""
    return bool(judgement["all"] and judgement["count"] and judgement["background"])


# -- out-of-world words -----------------------------------------------------------------------------------
# Prompts in the project pass through an expander (stages/models/template.py appends a detail, a camera, a
# light and a style: "..., rich color, slow dolly-in, blue hour ambience, anime style."). The models are trained
# with such words around the toy grammar so that they learn to ignore them.
_FILLER = ("cinematic shot of", "a video of", "a clip showing", "scene:", "simple animation,", "toy world:",
           "high quality", "4k", "slowly", "smooth", "in the frame", "minimal", "flat colors", "simple shapes",
           "beautiful", "the camera is static", "studio", "bright", "soft light", "dark mood", "retro game")


def noisy_prompt(prompt: str, rng: np.random.Generator) -> str:
    """The prompt, or (about half the time) the prompt with out-of-world words: the project's template
    expansion, random template phrases, or filler words before/after it."""
    from stages.models import template as T

    u = rng.random()
    if u < 0.3:
        return T.template(prompt, int(rng.integers(2**31)), None)[0]
    if u < 0.45:
        pool = T.DETAILS + T.CAMERAS + T.LIGHTING + [f"{s} style" for s in T.STYLES] + list(_FILLER)
        k = int(rng.integers(1, 6))
        tail = ", ".join(str(pool[i]) for i in rng.choice(len(pool), size=k, replace=False))
        return f"{prompt}, {tail}" + ("." if rng.random() < 0.5 else "")
    if u < 0.55:
        return f"{_FILLER[int(rng.integers(len(_FILLER)))]} {prompt}"
    return prompt
