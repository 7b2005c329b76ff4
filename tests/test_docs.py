"""The documentation stays true to the code: the generated job-file reference is current, the README stays a
page a newcomer reads at once, and every link between the pages leads somewhere."""
import re
from pathlib import Path

from pipeline import reference

ROOT = Path(__file__).resolve().parents[1]


def test_the_job_file_reference_is_generated_from_the_current_models():
    assert reference.PAGE.read_text() == reference.render(), "stale: run python -m pipeline.reference"


def test_every_job_file_key_has_a_description():
    missing = [line for line in reference.render().splitlines() if line.startswith("| `") and line.endswith("|  |")]
    assert not missing, "\n".join(missing)


def test_the_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def test_links_between_pages_lead_to_files_that_exist():
    broken = []
    for page in [ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), ROOT / "bench" / "README.md"]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if not target.startswith(("http://", "https://")) and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, "\n".join(broken)
