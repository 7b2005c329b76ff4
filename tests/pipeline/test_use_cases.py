"""The ready-made jobs for the four uses (manifests/*.yaml) validate and run with the built-in model; the ad
campaign's variant matrix gives each record its cell, with sizes from the aspect ratio; the image-to-video ad
campaign animates each product picture in every cell, fitted to the cell's shape."""
import json
from pathlib import Path

import av
import fsspec
import pytest
from PIL import Image

from pipeline.job import run_job
from pipeline.library import read_records
from pipeline.manifest import Manifest, RowValidator
from pipeline.plan import Planner
from pipeline.spec import JobSpecError, load_job
from tests.conftest import write_manifest

ROOT = Path(__file__).resolve().parents[2]
JOBS = sorted(p.name for p in (ROOT / "manifests").glob("*.yaml") if p.name != "demo.yaml")


def test_the_four_uses_have_a_job():
    assert {"training_sim.yaml", "ad_campaign.yaml", "virtual_event.yaml", "film_storyboard.yaml"} <= set(JOBS)


def planned(name: str, output: str) -> tuple:
    spec = load_job(ROOT / "manifests" / name, output=output)
    batches = list(Planner(spec).batches())
    return spec, [v for b in batches for v in b.todo], [r for b in batches for r in b.invalid]


@pytest.mark.parametrize("name", JOBS)
def test_use_case_job_validates(tmp_path, monkeypatch, name):
    monkeypatch.chdir(ROOT)  # job files name their manifests relative to the repository
    _, todo, invalid = planned(name, str(tmp_path / "out"))
    assert todo and not invalid


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", JOBS)
def test_use_case_job_runs(ray_local, tmp_path, monkeypatch, name):
    monkeypatch.chdir(ROOT)
    spec, todo, _ = planned(name, str(tmp_path / "out"))
    run = run_job(spec, echo=lambda *_: None)
    recs = read_records(str(tmp_path / "out")).to_pylist()
    assert len(recs) == len(todo) == sum(run.counts.values())
    assert all(r["status"] in ("accepted", "rejected") for r in recs), [r["error"] for r in recs]
    if name == "ad_campaign.yaml":
        cells = {(r["id"], r["style"], r["aspect_ratio"], r["seed_index"]) for r in recs}
        assert len(cells) == len(recs) == 2 * 2 * 3
        sizes = {r["aspect_ratio"]: (r["height"], r["width"]) for r in recs}
        assert sizes == {"16:9": (96, 160), "9:16": (160, 96), "1:1": (128, 128)}
    if name == "ad_campaign_i2v.yaml":
        check_i2v_campaign(recs, tmp_path / "out")


def check_i2v_campaign(recs: list[dict], out: Path) -> None:
    """Each product picture is the first frame of every cell, fitted to the cell's shape; each MP4 decodes with its
    cell's size; the report shows each video beside its picture as that video saw it."""
    assert len(recs) == 3 * 2 * 3 and {r["id"] for r in recs} == {"perfume", "cold-brew", "trail-sneaker"}
    for r in recs:
        assert r["image"] == str(ROOT / "manifests" / "ad_campaign_i2v" / Path(r["image"]).name)
        assert len(r["image_sha256"]) == 64 and r["conditioning_resize"] == "crop"
        with av.open(r["video_uri"]) as c:
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]
        assert (len(frames), *frames[0].shape) == (17, r["height"], r["width"], 3)
        with fsspec.open(r["image_preview_uri"], "rb") as f, Image.open(f) as shown:  # the picture cropped to this cell's aspect ratio
            assert abs(shown.width / shown.height - r["width"] / r["height"]) < 0.05
    chunk = (out / "report" / "cards" / "000000.js").read_text()
    cards = json.loads(chunk[chunk.index(",") + 1:chunk.rindex(")")])
    assert all(c["inputs"][0]["what"] == "first frame" and c["inputs"][0]["src"].startswith("../inputs/")
               for c in cards)


MATRIX = {"styles": ["anime", "noir"], "aspect_ratios": ["16:9", "9:16", "1:1"], "seeds": 2}


def test_matrix_cells_share_seeds_across_styles_and_shapes(tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", [{"id": "a", "prompt": "a fox", "seed": 10},
                                                        {"id": "b", "prompt": "a car"}])
    spec = load_job({"manifest": manifest, "output": str(tmp_path / "o"), "variants": MATRIX})
    vs = [v for b in Planner(spec).batches() for v in b.todo]
    assert len(vs) == 2 * 12
    a = [v for v in vs if v["id"] == "a"]
    assert [v["variant"] for v in a] == list(range(12))
    assert {(v["style"], v["aspect_ratio"], v["seed_index"]) for v in a} == {
        (s, r, i) for s in MATRIX["styles"] for r in MATRIX["aspect_ratios"] for i in range(2)}
    assert {v["seed"] for v in a if v["seed_index"] == 0} == {10}
    assert {v["seed"] for v in a if v["seed_index"] == 1} == {11}
    assert all(v["expanded_prompt"].endswith(f"{v['style']} style.") for v in a)
    assert len({v["params_hash"] for v in vs}) == 24


def test_a_row_cannot_also_set_what_the_matrix_sets(tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", [{"id": "a", "prompt": "a fox", "num_variants": 2,
                                                        "height": 64, "style": "noir"}])
    spec = load_job({"manifest": manifest, "output": str(tmp_path / "o"), "variants": MATRIX})
    m = Manifest(manifest)
    bad = RowValidator(spec, m.columns, {}).validate(next(m.batches()), 0).invalid[0]
    assert "num_variants: the job's variants matrix sets the variants" in bad["error"]
    assert "height: the job's variants matrix sets the sizes" in bad["error"]
    assert "style: the job's variants matrix sets the styles" in bad["error"]


def test_a_bad_matrix_names_its_key():
    with pytest.raises(JobSpecError, match=r"variants.aspect_ratios: '16x9': an aspect ratio is 'W:H'"):
        load_job({"manifest": "m", "output": "o", "variants": {"aspect_ratios": ["16x9"]}})
    with pytest.raises(JobSpecError, match="variants: 300 variants per row; at most 256"):
        load_job({"manifest": "m", "output": "o", "variants": {"styles": [str(i) for i in range(5)],
                                                               "aspect_ratios": ["1:1", "2:1", "3:1"], "seeds": 20}})
