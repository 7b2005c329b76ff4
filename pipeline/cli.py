"""The `rushes` command.

    rushes validate JOB.yaml [--manifest URI] [--output URI] [--strict]
    rushes run JOB.yaml [--manifest URI] [--output URI] [--run-id ID] [--force]
    rushes plan JOB.yaml [--gpu NAME] [--gpus N] [--mfu F] [--manifest URI] [--output URI]
    rushes status OUTPUT_URI [--storage-option KEY=VALUE ...]
    rushes compact OUTPUT_URI [--storage-option KEY=VALUE ...] [--target-records N] [--force]
    rushes report OUTPUT_URI [--run RUN_ID] [--storage-option KEY=VALUE ...]
    rushes submit JOB.yaml --address http://HEAD:8265 [--wait] [--manifest URI] [--output URI] [--force]
    rushes status SUBMISSION_ID --address http://HEAD:8265
    rushes logs SUBMISSION_ID --address http://HEAD:8265 [--follow]

Exit codes: 0 when every row ended in a recorded state (`plan`: when every stage fits); 2 when the job file
or the manifest cannot be used (nothing was generated; `plan`: a stage does not fit its GPU); 3 when another run holds the output; 1 when the job itself could not run
(a storage error, for one). `submit --wait` exits with the submitted job's own exit code.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from pipeline.errors import ClusterError, JobFailed
from pipeline.gpu_plan import DEFAULT_MFU, GPUS
from pipeline.lease import LeaseHeld, LeaseLost
from pipeline.manifest import ManifestError
from pipeline.spec import JobSpecError, load_job
from stages.common.storage import StorageError
from stages.common.variant import STATUSES
from stages.contract import ContractError
from pipeline.submit import SubmitError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_BUSY = 0, 1, 2, 3


def _load(args) -> "JobSpec":  # noqa: F821
    overrides = {"manifest": args.manifest, "output": args.output}
    if getattr(args, "run_id", None):
        overrides["run_id"] = args.run_id
    return load_job(args.job, **overrides)


def cmd_validate(args) -> int:
    from pipeline.library import LibraryState
    from pipeline.plan import Planner

    spec = _load(args).resolved()
    planner = Planner(spec, LibraryState.load(spec.output, spec.storage_options, with_phash=False))
    for warning in planner.warnings:
        print(f"warning: {warning}")
    print(f"job file {args.job}: ok")
    print(f"manifest {spec.manifest}: {planner.manifest.num_rows} rows")
    valid = invalid = variants = todo = 0
    for batch in planner.batches():  # streamed: any manifest size
        for rec in batch.invalid:
            print(f"  row {rec['row']} (id {rec['id']!r}): {rec['error']}")
        valid, invalid = valid + batch.valid, invalid + len(batch.invalid)
        variants, todo = variants + batch.variants, todo + len(batch.todo)
    print(f"  {valid + invalid} rows, {valid} valid, {invalid} invalid")
    w = planner.work
    print(f"variants: {variants}; to generate {todo} ({w['new']} new, {w['retried']} retried, "
          f"{w['regenerated']} regenerated), {w['skipped']} already done in the output")
    m = planner.model
    print(f"model: {m['family']} {m['path']} dtype={m['dtype']} weights={str(m['weights_hash'])[:16]}")
    print(f"output: {spec.output}")
    return EXIT_BAD_INPUT if args.strict and invalid else EXIT_OK


def cmd_plan(args) -> int:
    from pipeline.gpu_plan import cluster_gpu, plan_job

    spec = _load(args).resolved()
    gpu = args.gpu or cluster_gpu(spec)
    plan = plan_job(spec, gpu, args.gpus, args.mfu)
    print(plan.render())
    return EXIT_OK if plan.fits else EXIT_BAD_INPUT


def cmd_run(args) -> int:
    from pipeline.job import run_job

    summary = run_job(_load(args), force=args.force)
    print(summary.render())
    return EXIT_OK


def cmd_submit(args) -> int:
    from pipeline import submit

    spec = _load(args).resolved()
    overrides = {"manifest": args.manifest, "output": args.output}
    submission_id = submit.submit(args.job, spec, args.address, overrides, args.working_dir, args.force)
    print(f"submitted {submission_id} (run {spec.run_id}) to {submit.address_of(args.address)}")
    print(f"  follow:  rushes logs {submission_id} --address {submit.address_of(args.address)} --follow")
    if not args.wait:
        return EXIT_OK
    try:
        status = submit.follow(submission_id, args.address)
    except KeyboardInterrupt:
        print(f"rushes: stopped following; the job keeps running (ray job stop {submission_id} to stop it)",
              file=sys.stderr)
        return 130
    print(submit.describe(submission_id, args.address))
    return submit.exit_code(submission_id, args.address) if status != "STOPPED" else EXIT_FAILED


def cmd_logs(args) -> int:
    from pipeline import submit

    if args.follow:
        status = submit.follow(args.submission_id, args.address)
        print(f"[rushes] submission {args.submission_id}: {status}")
    else:
        sys.stdout.write(submit.logs(args.submission_id, args.address))
    return EXIT_OK


def cmd_compact(args) -> int:
    from pipeline.compact import TARGET_RECORDS, compact

    options = dict(kv.split("=", 1) for kv in args.storage_option)
    print(compact(args.output, options, args.target_records or TARGET_RECORDS, force=args.force).render())
    return EXIT_OK


def cmd_report(args) -> int:
    from pipeline.report import ReportError, write_report

    options = dict(kv.split("=", 1) for kv in args.storage_option)
    try:
        print(f"report: {write_report(args.output, options, args.run)}")
    except ReportError as e:
        print(f"rushes: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def cmd_status(args) -> int:
    from collections import Counter

    if args.address:  # a submission id on a cluster
        from pipeline import submit

        print(submit.describe(args.output, args.address))
        return EXIT_OK

    from pipeline.lease import Lease
    from pipeline.library import read_records

    options = dict(kv.split("=", 1) for kv in args.storage_option)
    table = read_records(args.output, options)
    counts = Counter(table.column("status").to_pylist()) if table.num_rows else Counter()
    print(f"library {args.output}: {table.num_rows} current records")
    for status in STATUSES:
        print(f"  {status:<9} {counts[status]}")
    if table.num_rows:
        latest = max(zip(table.column("committed_at").to_pylist(), table.column("run_id").to_pylist()))
        print(f"latest run: {latest[1]} (last commit {latest[0]:%Y-%m-%d %H:%M:%S} UTC)")
    holder = Lease(args.output, "-", storage_options=options).holder()
    print(f"running now: {holder['run_id']} on {holder['host']}" if holder else "running now: none")
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
            p.add_argument("--force", action="store_true",
                           help="take over the output's lease even if it has not expired (its run is dead)")
    p = sub.add_parser("plan", help="the memory each model stage needs on a GPU, and the job's GPU-hours; nothing runs")
    p.add_argument("job", help="job file (YAML)")
    p.add_argument("--gpu", choices=sorted(GPUS), help="the GPU to plan for (default: the cluster's, when ray.address "
                                                       "or RAY_ADDRESS names one with GPUs)")
    p.add_argument("--gpus", type=positive_int, default=1, help="GPUs the job runs on, for its wall time")
    p.add_argument("--mfu", type=float, default=DEFAULT_MFU, help="model FLOPs utilization for the GPU-hours")
    p.add_argument("--manifest", help="manifest URI; overrides the job file")
    p.add_argument("--output", help="output URI; overrides the job file")
    p = sub.add_parser("submit", help="submit the job to a Ray cluster through the Ray Jobs API")
    p.add_argument("job", help="job file (YAML), inside the working directory")
    p.add_argument("--address", help="the cluster's dashboard URL, e.g. http://HEAD:8265 "
                                     "(default: $RAY_API_SERVER_ADDRESS)")
    p.add_argument("--wait", action="store_true", help="follow the logs and exit with the job's exit code")
    p.add_argument("--manifest", help="manifest URI; overrides the job file")
    p.add_argument("--output", help="output URI; overrides the job file")
    p.add_argument("--run-id", help="run id (default: timestamp + random suffix)")
    p.add_argument("--working-dir", help="folder uploaded as the job's working directory (default: .)")
    p.add_argument("--force", action="store_true", help="passed to `rushes run`: take over the output's lease")
    p = sub.add_parser("logs", help="the logs of a submitted job")
    p.add_argument("submission_id")
    p.add_argument("--address", help="the cluster's dashboard URL (default: $RAY_API_SERVER_ADDRESS)")
    p.add_argument("--follow", action="store_true", help="keep printing until the job ends")
    p = sub.add_parser("status", help="an output library's counts and latest run; with --address, a submission's state")
    p.add_argument("output", help="output URI, or a submission id with --address")
    p.add_argument("--address", help="the cluster's dashboard URL; makes OUTPUT a submission id")
    p.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                   help="fsspec option, e.g. endpoint_url=http://127.0.0.1:9000")
    p = sub.add_parser("compact", help="rewrite the library's metadata parts into a few large ones, under the lease")
    p.add_argument("output", help="output URI")
    p.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                   help="fsspec option, e.g. endpoint_url=http://127.0.0.1:9000")
    p.add_argument("--target-records", type=positive_int, default=None, metavar="N",
                   help="records per new part (default 100000)")
    p.add_argument("--force", action="store_true",
                   help="take over the output's lease even if it has not expired (its holder is dead)")
    p = sub.add_parser("report", help="write the library's report, <output>/report/index.html")
    p.add_argument("output", help="output URI")
    p.add_argument("--run", help="the run whose summary it shows (default: the run that committed last)")
    p.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                   help="fsspec option, e.g. endpoint_url=http://127.0.0.1:9000")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[rushes] %(message)s")
    try:
        commands = {"validate": cmd_validate, "run": cmd_run, "plan": cmd_plan, "status": cmd_status, "submit": cmd_submit,
                    "logs": cmd_logs, "compact": cmd_compact, "report": cmd_report}
        return commands[args.command](args)
    except (JobSpecError, ManifestError) as e:
        print(f"rushes: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (LeaseHeld, LeaseLost) as e:
        print(f"rushes: {e}", file=sys.stderr)
        return EXIT_BUSY
    except StorageError as e:
        print(f"rushes: {e}", file=sys.stderr)
        return EXIT_FAILED
    except (ClusterError, ContractError, JobFailed, SubmitError) as e:
        print(f"rushes: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("rushes: interrupted; the records committed so far are kept", file=sys.stderr)
        return 130


def entry() -> None:
    """The `rushes` command. It leaves with os._exit after its own clean-up: with torch loaded, Arrow's
    Parquet reader can abort the interpreter's teardown now and then ("terminate called without an active
    exception"), which would turn a finished run's exit code into a crash."""
    code = main()
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    finally:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    entry()
