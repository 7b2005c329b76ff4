"""The report at library scale: seconds to write it, its size per card, and (with Debian's chromium) seconds
for the browser to open it and to page deep into it, flat and grouped by cell.

    python bench/report.py [--cards 100000]

The library is synthetic: records with every field the report reads (two statuses, styles, tags, a variant
matrix's aspect ratios and seed indices, a campaign column), committed as metadata parts like a run does.
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine_info import describe  # bench/machine_info.py, next to this file
from pipeline.report import write_report
from tests.synthetic_library import synthetic_library


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cards", type=int, default=100_000)
    args = ap.parse_args()
    print(describe(with_torch=False))
    out = tempfile.mkdtemp()
    synthetic_library(out, "bench", args.cards)
    start = time.perf_counter()
    write_report(out)
    written = time.perf_counter() - start
    report = Path(out) / "report"
    index = (report / "index.html").stat().st_size
    total = sum(p.stat().st_size for p in report.rglob("*") if p.is_file())
    print(f"{args.cards} cards: report written in {written:.1f} s (peak RSS of this process "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB); index.html {index / args.cards:.1f} "
          f"bytes/card, whole report {total / args.cards:.0f} bytes/card")
    from tests.browser import Chromium, find_chromium

    if not find_chromium():
        print("chromium not installed: browser figures skipped (apt-get install chromium)")
        return
    with Chromium() as b:
        start = time.perf_counter()
        b.open((report / "index.html").as_uri())
        b.wait_for("document.body.dataset.ready === '1'", 120)
        print(f"chromium: first page in {time.perf_counter() - start:.2f} s")
        for fragment in ("status=rejected&tag=night&page=700", "status=rejected&group=cell&page=700"):
            start = time.perf_counter()
            b.evaluate(f"document.body.dataset.ready = ''; location.hash = '{fragment}'")
            b.wait_for("document.body.dataset.ready === '1'", 120)
            print(f"chromium: #{fragment} in {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
