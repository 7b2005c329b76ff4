"""The `rushes` command.

    rushes validate JOB.yaml [--manifest URI] [--output URI] [--strict]
    rushes run JOB.yaml [--manifest URI] [--output URI] [--run-id ID]

Exit codes: 0 when every row ended in a recorded state; 2 when the job file or the manifest cannot be
used (nothing was generated); 1 when the job itself could not run.
"""
from __future__ import annotations

import argparse
import logging
import sys

from pipeline.manifest import ManifestError
from pipeline.spec import JobSpecError, load_job

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def _load(args) -> "JobSpec":  # noqa: F821
    overrides = {"manifest": args.manifest, "output": args.output}
    if getattr(args, "run_id", None):
        overrides["run_id"] = args.run_id
    return load_job(args.job, **overrides)


def cmd_validate(args) -> int:
    from pipeline.job import plan_job

    plan = plan_job(_load(args))
    rows = plan.rows
    print(f"job file {args.job}: ok")
    print(f"manifest {plan.spec.manifest}: {len(rows.valid) + len(rows.invalid)} rows, "
          f"{len(rows.valid)} valid, {len(rows.invalid)} invalid")
    for rec in rows.invalid:
        print(f"  row {rec['row']} (id {rec['id']!r}): {rec['error']}")
    print(f"variants to generate: {plan.num_variants}")
    m = plan.model
    print(f"model: {m['family']} {m['path']} dtype={m['dtype']} weights={str(m['weights_hash'])[:16]}")
    print(f"output: {plan.spec.output}")
    return EXIT_BAD_INPUT if args.strict and rows.invalid else EXIT_OK


def cmd_run(args) -> int:
    from pipeline.job import run_job

    summary = run_job(_load(args))
    print(summary.render())
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rushes", description="Batch text-to-video generation on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_ in (("validate", "check the job file and every manifest row; generate nothing"),
                        ("run", "run the job")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("job", help="job file (YAML)")
        p.add_argument("--manifest", help="manifest URI; overrides the job file")
        p.add_argument("--output", help="output URI; overrides the job file")
        if name == "validate":
            p.add_argument("--strict", action="store_true", help="exit 2 when any row is invalid")
        else:
            p.add_argument("--run-id", help="run id (default: timestamp + random suffix)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[rushes] %(message)s")
    try:
        return {"validate": cmd_validate, "run": cmd_run}[args.command](args)
    except (JobSpecError, ManifestError) as e:
        print(f"rushes: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("rushes: interrupted; the records committed so far are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
