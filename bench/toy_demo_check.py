"""Does the demo's filter accept the videos that show their prompt and reject the others? Every video of a
library made with `builtin:toy-shapes` (the demo's, by default) is decoded back and judged against its prompt by
plain image analysis (training/toy_world/world.py), the same judge as bench/toy_adherence.py: right when every
object has the colour, shape and motion asked for, the object count is the one asked for and so is the
background. The judgement is then set beside the filter's verdict.

    python bench/toy_demo_check.py [output/demo]

The demo keeps rejected videos (`encode.keep_rejected`), so both sides can be judged. Printed: one line per
video (id, status, CLIP score, the filter's reasons, what the analysis saw, right or wrong), then the table of
accepted/rejected against right/wrong, with every try of a variant retried under `filter.retries_on_reject`
counted once (its last try). Its last line is
`toy_demo_check accepted_right <n> accepted_wrong <n> rejected_right <n> rejected_wrong <n>`.
A prompt outside the toy world cannot be judged and is listed apart.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine_info import describe  # noqa: E402 - bench/machine_info.py, next to this file
from toy_adherence import frames_of  # noqa: E402 - bench/toy_adherence.py, next to this file


def main() -> None:
    from pipeline.library import read_records
    from training.toy_world import world

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("library", nargs="?", default=str(ROOT / "output" / "demo"))
    args = ap.parse_args()
    print(describe())
    table = {(s, r): 0 for s in ("accepted", "rejected") for r in (True, False)}
    outside = []
    for r in sorted(read_records(args.library).to_pylist(), key=lambda r: (r["id"], r.get("variant", 0))):
        score = dict(r.get("metrics") or []).get("clip_score")  # metrics: a map, read back as (key, value) pairs
        head = f"{r['id']}/{r['variant']} {r['status']:8s} clip {'-' if score is None else round(score, 1)!s:5s}"
        if not r.get("video_uri") or r["status"] not in ("accepted", "rejected"):
            print(f"{head} no video: {r.get('error') or ''}")
            continue
        objs, bg = world.parse_prompt(r["prompt"])
        if not objs or bg is None:
            outside.append(r["id"])
            print(f"{head} outside the world: {r['prompt']!r}  {'; '.join(r.get('reasons') or [])}")
            continue
        frames = frames_of(r["video_uri"])
        seen = world.analyze(frames, r["prompt"])
        j = world.judge(seen, r["prompt"])
        right = world.all_right(j)  # every object, no extra one, the background
        table[(r["status"], right)] += 1
        drawn = "; ".join(f"{o['colour']} {o['shape']} {o['motion']}" for o in seen["objects"]) or "nothing"
        print(f"{head} {'RIGHT' if right else 'wrong'}  asked: {r['prompt']!r}  drawn: {drawn} "
              f"({seen['count']} object(s), {seen['background']} background)  "
              f"{'; '.join(r.get('reasons') or [])}")
    print(f"\n{'':10s} {'right':>6s} {'wrong':>6s}")
    for s in ("accepted", "rejected"):
        print(f"{s:10s} {table[(s, True)]:6d} {table[(s, False)]:6d}")
    if outside:
        print(f"outside the world (not judged): {', '.join(outside)}")
    print(f"toy_demo_check accepted_right {table[('accepted', True)]} accepted_wrong {table[('accepted', False)]} "
          f"rejected_right {table[('rejected', True)]} rejected_wrong {table[('rejected', False)]}")


if __name__ == "__main__":
    main()
