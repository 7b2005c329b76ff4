"""The template rewriter: a prompt made detailed without any model, as `expand.mode: template` does.

It adds a detail, a camera, a light and a style drawn with the variant's seed, and never contradicts its
prompt: it adds no time of day or lighting, style or camera that the prompt already fixes, and it leaves a
prompt that is not in English as it is (and says why).
"""
from __future__ import annotations

import random
import re

DETAILS = ["highly detailed textures", "natural motion", "realistic proportions", "fine surface detail",
           "subtle depth of field", "crisp focus on the subject", "rich color", "soft film grain"]
CAMERAS = ["slow dolly-in", "wide establishing shot", "smooth tracking shot", "static tripod shot",
           "low-angle shot", "aerial drone shot", "handheld close-up", "slow orbit around the subject"]
LIGHTING = ["golden hour lighting", "soft overcast light", "dramatic rim light", "blue hour ambience",
            "warm practical lights", "high-key studio lighting", "volumetric light through haze",
            "moonlit night"]
STYLES = ["cinematic", "photorealistic", "documentary", "35mm film", "commercial product", "anime",
          "watercolor", "vintage"]
# A prompt with at least this many words is treated as already detailed.
DETAILED_WORDS = 25

# What a prompt can already fix. A template word of a kind the prompt fixes is left out.
_WORDS = {
    "lighting": r"sunset|sunrise|dawn|dusk|twilight|morning|noon|midday|afternoon|evening|night|midnight|"
                r"daylight|daytime|moon\w*|golden hour|blue hour|overcast|neon|candle\w*|lamp\w*|lit|"
                r"lighting|light|backlit|shadows?|sunlight|sunny|dark|darkness|storm\w*|fog\w*|rain\w*",
    "camera": r"shot|close-?up|dolly|tracking|aerial|drone|pan|panning|tilt|orbit\w*|zoom\w*|handheld|"
              r"tripod|pov|point of view|crane|low-angle|high-angle|bird'?s-eye|wide-angle|camera|lens|"
              r"timelapse|time-lapse|slow motion",
    "style": r"style|cinematic|photorealistic|realistic|documentary|anime|manga|cartoon|watercolor|"
             r"oil painting|painting|sketch|pixel art|claymation|3d render|cgi|35mm|16mm|film|vintage|noir|"
             r"retro|vhs|illustration|comic|surreal",
}
FIXES = {kind: re.compile(rf"\b({words})\b", re.IGNORECASE) for kind, words in _WORDS.items()}
_LATIN = re.compile(r"[A-Za-z]")
_LETTER = re.compile(r"[^\W\d_]")


def not_english(prompt: str) -> bool:
    """Mostly letters outside the Latin alphabet (Chinese, Cyrillic, ...): the template's English words
    would be glued onto another language."""
    letters = _LETTER.findall(prompt)
    return bool(letters) and len(_LATIN.findall(prompt)) < 0.8 * len(letters)


def template(prompt: str, seed: int, style: str | None, styles: list[str] | None = None) -> tuple[str, str | None]:
    """(expanded prompt, why the template did not apply, if it did not). `style` None: one drawn from `styles`
    (or the built-in ones) unless the prompt has its own."""
    if not_english(prompt):
        return prompt, "template did not apply: the prompt is not in English (the template's words are); kept as it is"
    rng = random.Random(seed)
    # Every draw is made whatever the prompt fixes, so that a prompt's other words stay as they were.
    detail, camera, light = rng.choice(DETAILS), rng.choice(CAMERAS), rng.choice(LIGHTING)
    drawn = rng.choice(styles or STYLES)
    base = prompt.strip().rstrip(".")
    if style is None and FIXES["style"].search(base):
        style = ""  # the prompt has its own style
    style = drawn if style is None else style
    tail = f"{style} style." if style and style.lower() not in base.lower() else ""
    if len(base.split()) >= DETAILED_WORDS:
        return (f"{base}. {tail}" if tail else f"{base}."), None
    words = [detail]
    if not FIXES["camera"].search(base):
        words.append(camera)
    if not FIXES["lighting"].search(base):
        words.append(light)
    return f"{base}, {', '.join(words)}" + (f", {tail}" if tail else "."), None


def storyboard(prompt: str, shots: list[dict], expand) -> list[dict]:
    """Each shot's expanded prompt, written knowing the whole storyboard: the row's prompt (its cast and setting)
    opens every shot, so a character is described in the same words in each; `expand(text)` is one draw of the
    template (one seed: the same style, camera and light in every shot, so the style carries over)."""
    cast = prompt.strip().rstrip(".")
    return [{**s, "expanded_prompt": expand(f"{cast}. {s['prompt'].strip()}")} for s in shots]
