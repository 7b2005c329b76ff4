"""The benchmarks' `--set key.path=value`: one job-file key changed, the value read as YAML."""
from __future__ import annotations

import yaml


def apply(job: dict, items: list[str]) -> dict:
    """`job` with each `key.path=value` of `items` set (missing sections made); returns `job`."""
    for item in items:
        dotted, _, value = item.partition("=")
        *parents, last = dotted.split(".")
        d = job
        for p in parents:
            d = d.setdefault(p, {})
        d[last] = yaml.safe_load(value)
    return job
