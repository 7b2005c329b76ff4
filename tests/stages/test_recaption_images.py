"""Recaptioning a row with an image, without Ray: a vision-language model (builtin:tiny-llava, locally and behind
`transformers serve`) is given the image as the video will see it and the instructions to describe motion and
camera; a text-only model rewrites the prompt alone, and the record says so in `expand_image`."""
import hashlib
import io

import pytest
from PIL import Image

from stages.contract import RunContext
from stages.expand import ExpandOptions, ExpandStage
from stages.models.rewriters import SYSTEM_PROMPTS, EndpointRewriter, messages_for, resolve_llm_path
from stages.models.vision_language import IMAGE_NOTES, UNSEEN_NOTES, as_parts, takes_images
from tests import planning

pytestmark = pytest.mark.timeout(600)
LOCAL = {"mode": "llm", "backend": "local", "resources": {"num_gpus": 0}, "max_new_tokens": 24}
VLM = {**LOCAL, "model": "builtin:tiny-llava"}
TEXT_ONLY = {**LOCAL, "model": "builtin:tiny-qwen"}


def picture(path, colour, size) -> dict:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    path.write_bytes(buf.getvalue())
    return {"image": str(path), "image_sha256": hashlib.sha256(buf.getvalue()).hexdigest()}


def rows_of(tmp_path, cells=None) -> list[dict]:
    """A landscape picture, a portrait one, and a text-only row, as the planner's manifest rows."""
    given = [picture(tmp_path / "wide.png", (200, 40, 40), (120, 60)), picture(tmp_path / "tall.png", (40, 40, 200),
                                                                              (40, 90)), {}]
    rows = []
    for i, g in enumerate(given):
        rows.append({"row": i, "id": f"r{i}", "prompt": ["a bottle turns", "a shoe lifts", "a red car"][i],
                     "negative_prompt": "", "seed": 10 + i, "num_variants": 1, "height": 64, "width": 96,
                     "num_frames": 9, "fps": 8, "num_inference_steps": 2, "guidance_scale": 5.0, "style": None,
                     "tags": [], "extra": {}, **g, "conditioning_resize": "crop" if g else None})
    return rows


class Spy:
    """Wraps a rewriter's `rewrite` and keeps what it was asked: the chats, seeds and images."""

    def __init__(self, rewriter):
        self.inner, self.calls = rewriter, []
        self.sees_images = getattr(rewriter, "sees_images", False)

    def rewrite(self, chats, seeds, *args, images=None):
        self.calls.append((chats, seeds, images))
        return self.inner.rewrite(chats, seeds, *args, images=images)


def stage_for(options: dict, tmp_path) -> ExpandStage:
    stage = ExpandStage(ExpandOptions(**options), RunContext(output=str(tmp_path / "out")))
    stage.setup()
    stage.rewriter = Spy(stage.rewriter)
    return stage


def test_planning_says_whether_the_rewriter_sees_the_image(model_cache, tmp_path):
    assert takes_images(resolve_llm_path("builtin:tiny-llava")) and not takes_images(resolve_llm_path("builtin:tiny-qwen"))
    rows = rows_of(tmp_path)
    status = lambda o: [v["expand_image"] for v in planning.planned(ExpandStage(ExpandOptions(**o)), rows)]  # noqa
    assert status(VLM) == ["shown", "shown", None]
    assert status(TEXT_ONLY) == ["not shown: local:builtin:tiny-qwen takes text only"] * 2 + [None]
    endpoint = {"mode": "llm", "backend": "openai", "url": "http://127.0.0.1:9/v1", "model": "qwen-vl"}
    assert status({**endpoint, "sees_images": True})[:2] == ["shown"] * 2
    assert status(endpoint)[0] == "not shown: openai:qwen-vl takes text only (expand.sees_images is not set)"
    assert status({"mode": "template"}) == [None] * 3
    board = {**rows[0], "shots": [{"prompt": "it turns", "duration_s": 1.0}]}
    assert planning.planned(ExpandStage(ExpandOptions(**VLM)), [board])[0]["expand_image"].startswith("not shown")


def test_the_image_settings_enter_params_hash_only_when_set():
    plain = ExpandOptions(**VLM).pixel_settings()["expand"]
    assert "sees_images" not in plain and "image_prompt" not in plain  # older libraries keep their params_hash
    told = ExpandOptions(**VLM, image_prompt="Only describe the camera.").pixel_settings()["expand"]
    assert told["image_prompt"] == "Only describe the camera."
    with pytest.raises(ValueError, match="sees_images are for backend openai"):
        ExpandOptions(**VLM, sees_images=True)


def test_a_vision_language_model_is_shown_each_image_as_its_cell_fits_it(model_cache, tmp_path):
    cells = [{"aspect_ratio": "16:9", "height": 64, "width": 112, "seed_index": 0},
             {"aspect_ratio": "9:16", "height": 112, "width": 64, "seed_index": 0}]
    stage = stage_for(VLM, tmp_path)
    rows = planning.planned(stage, rows_of(tmp_path), cells)
    out = stage(rows)
    chats, _, images = stage.rewriter.calls[0]
    # each cell is shown its own crop of its picture; the text row's two cells share one rewrite (same seed)
    assert len(chats) == 5
    for r, chat, shown in zip(out, chats, images):
        system, user = chat[0]["content"][0]["text"], chat[-1]["content"]
        if r.get("image"):
            assert r["expand_image"] == "shown" and len(shown) == 1 and shown[0].size == (r["width"], r["height"])
            assert user[0] == {"type": "image"} and IMAGE_NOTES["en"].format(last="") in system
            assert shown[0].getpixel((r["width"] // 2, r["height"] // 2))[:1] in ((200,), (40,))
        else:
            assert r["expand_image"] is None and shown == [] and all(p["type"] == "text" for p in user)
            assert system == SYSTEM_PROMPTS["en"]
        assert r["status"] == "pending" and r["expanded_prompt"]  # the rewrite, or the original with its reason
        assert r["expand_error"] is None or "the original prompt is used" in r["expand_error"]
    assert out[0]["expand_input_tokens"] > out[4]["expand_input_tokens"]  # image tokens: the model read the picture


def test_the_same_seed_and_image_give_the_same_rewrite_whatever_the_batch(model_cache, tmp_path):
    stage = stage_for(VLM, tmp_path)
    rows = planning.planned(stage, rows_of(tmp_path))
    together = [r["expanded_prompt"] for r in stage([dict(r, stage_seconds={}) for r in rows])]
    alone = [stage([dict(r, stage_seconds={})])[0]["expanded_prompt"] for r in rows]
    assert together == alone


def test_a_text_only_model_rewrites_without_the_image_and_says_so(model_cache, tmp_path):
    stage = stage_for(TEXT_ONLY, tmp_path)
    out = stage(planning.planned(stage, rows_of(tmp_path)))
    chats, _, images = stage.rewriter.calls[0]
    assert images == [[], [], []] and all(isinstance(m["content"], str) for c in chats for m in c)
    assert UNSEEN_NOTES["en"] in chats[0][0]["content"] and UNSEEN_NOTES["en"] not in chats[2][0]["content"]
    assert out[0]["expand_image"] == "not shown: local:builtin:tiny-qwen takes text only"
    assert out[0]["expanded_prompt"]


def test_an_image_changed_since_planning_fails_its_row_only(model_cache, tmp_path):
    stage = stage_for(VLM, tmp_path)
    rows = planning.planned(stage, rows_of(tmp_path))
    picture(tmp_path / "wide.png", (0, 200, 0), (120, 60))
    out = stage(rows)
    assert out[0]["status"] == "failed"
    assert out[0]["error"].startswith(f"expand: image: {tmp_path / 'wide.png'}: the file changed since the run")
    assert [r["status"] for r in out[1:]] == ["pending", "pending"] and out[1]["expanded_prompt"]


@pytest.fixture(scope="module")
def vlm_server(model_cache, tmp_path_factory):
    """`transformers serve` on 127.0.0.1 serving builtin:tiny-llava: an OpenAI-compatible vision-language endpoint."""
    pytest.importorskip("fastapi", reason="needs transformers' serving extra (pip install 'transformers[serving]')")
    from tests.faulty_llm import LLMServer

    server = LLMServer(resolve_llm_path("builtin:tiny-llava"), tmp_path_factory.mktemp("vlm") / "serve.log")
    yield server
    server.stop()


def test_an_endpoint_of_a_vision_language_model_is_sent_the_image(vlm_server, tmp_path):
    url = f"http://127.0.0.1:{vlm_server.port}/v1"
    chat = messages_for("a bottle turns", "Rewrite the video idea.", [])
    img = Image.new("RGB", (96, 64), (200, 40, 40))
    rw = EndpointRewriter(url, vlm_server.model, None, 60.0, 1, 1)
    seen, blind = rw.rewrite([as_parts(chat, [img], "openai"), as_parts(chat, [], "openai")], [1, 1], 0.7, 0.9, 16)
    assert seen.error is None and blind.error is None
    assert seen.input_tokens - blind.input_tokens >= 16  # the picture's 16 image tokens reached the model
    options = {"mode": "llm", "backend": "openai", "url": url, "model": vlm_server.model, "sees_images": True,
               "max_new_tokens": 24, "concurrency": 1}
    stage = stage_for(options, tmp_path)
    out = stage(planning.planned(stage, rows_of(tmp_path)))
    chats = stage.rewriter.calls[0][0]
    assert chats[0][-1]["content"][0]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert isinstance(chats[2][-1]["content"], str)  # a text row is sent as text
    assert out[0]["expand_image"] == "shown" and out[0]["expand_input_tokens"] > out[2]["expand_input_tokens"]
