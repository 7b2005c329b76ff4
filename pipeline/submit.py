"""Submitting a job to a Ray cluster through the Ray Jobs API, and following it.

In: a job file and the address of the cluster's dashboard (http://HEAD:8265). The job file is validated here
first; then the working directory (the job file, a local manifest, any code beside it; .gitignore'd files are
left out) is uploaded as the job's `working_dir`, and this Rushes code as `py_modules`, so the cluster runs
what was tested here. The entrypoint is `rushes run` on the job file. Out: the submission id, which is
`rushes-<run_id>`, so a submission and the records it commits are found by the same name.
"""
from __future__ import annotations

import asyncio
import os
import shlex
import sys
import time
from pathlib import Path

import pipeline
import stages
from pipeline.spec import JobSpec

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
AGENT_WAIT_S = 60.0


class SubmitError(RuntimeError):
    """The cluster could not be reached or refused the submission."""


def address_of(address: str | None) -> str:
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if not address or not address.startswith(("http://", "https://")):
        raise SubmitError("--address: give the Ray dashboard's URL, e.g. http://HEAD:8265 "
                          "(or set RAY_API_SERVER_ADDRESS)")
    return address


def use_auth_token_if_present() -> None:
    """As `ray` itself does for a local cluster: with a token at hand (~/.ray/auth_token, RAY_AUTH_TOKEN or
    RAY_AUTH_TOKEN_PATH) and RAY_AUTH_MODE unset, requests carry it. Recent Ray clusters require one."""
    import logging

    try:
        from ray._private.authentication import authentication_token_setup as setup
    except ImportError:  # a Ray without token authentication
        return
    quiet = logging.getLogger(setup.__name__)
    level, quiet.level = quiet.level, logging.ERROR
    try:
        setup.maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    finally:
        quiet.level = level


def client(address: str | None):
    from ray.job_submission import JobSubmissionClient

    url = address_of(address)
    use_auth_token_if_present()
    try:
        return JobSubmissionClient(url)
    except Exception as e:  # noqa: BLE001 - connection errors come in many types
        raise SubmitError(f"cannot reach the Ray Jobs API at {url}: {type(e).__name__}: {e}") from None


def entrypoint(job_file: str, spec: JobSpec, force: bool) -> str:
    args = ["python", "-m", "pipeline.cli", "run", job_file, "--run-id", spec.run_id]
    if force:
        args.append("--force")
    return " ".join(shlex.quote(a) for a in args)


def submit(job_path: str, spec: JobSpec, address: str | None, overrides: dict[str, str] | None = None,
           working_dir: str | None = None, force: bool = False) -> str:
    """Submit `spec` (validated and resolved, `overrides` applied) and return the submission id."""
    from stages.common.storage import filesystem, is_local

    fs, _ = filesystem(spec.output, spec.storage_options)
    if is_local(fs) and not os.path.isabs(spec.output.removeprefix("file://")):
        raise SubmitError(f"output: {spec.output!r} is a relative local path; on the cluster it would land in "
                          "the job's temporary working directory. Give an object-store URI (s3://...) or an "
                          "absolute path on storage every node shares")
    root = Path(working_dir or os.getcwd()).resolve()
    job = Path(job_path).resolve()
    if not job.is_relative_to(root):
        raise SubmitError(f"{job_path}: the job file must lie inside the working directory {root} "
                          "(it is uploaded with it); run from its folder or pass --working-dir")
    runtime_env = {
        "working_dir": str(root),
        "py_modules": [os.path.dirname(pipeline.__file__), os.path.dirname(stages.__file__)],
        "excludes": [".git", ".venv", "output", "**/__pycache__"],
    }
    # The job file as given, with --manifest/--output overrides passed through the run command.
    cmd = entrypoint(str(job.relative_to(root)), spec, force)
    for key, value in (overrides or {}).items():
        if value is not None:
            cmd += f" --{key} {shlex.quote(value)}"
    submission_id = f"rushes-{spec.run_id}"
    c = client(address)
    # A head that has just started answers before its job agent is up ("try again later"): wait for it.
    deadline, waited = time.monotonic() + AGENT_WAIT_S, False
    while True:
        try:
            c.submit_job(entrypoint=cmd, runtime_env=runtime_env, submission_id=submission_id,
                         metadata={"rushes_run_id": spec.run_id, "rushes_output": spec.output, "name": spec.name})
            return submission_id
        except Exception as e:  # noqa: BLE001 - the SDK raises RuntimeError, ConnectionError, ...
            if "try again later" not in str(e):
                raise SubmitError(f"the cluster refused the submission: {type(e).__name__}: {e}") from None
            if not waited:
                print(f"the cluster's job agent is not up yet; waiting up to {AGENT_WAIT_S:.0f} s", file=sys.stderr)
                waited = True
            if time.monotonic() > deadline:
                # The head answers but its job agent never registered: the agent failed to start (most often a
                # port it was given was already in use) or is still starting on an overloaded head.
                raise SubmitError(
                    f"the cluster's job agent did not come up within {AGENT_WAIT_S:.0f} s, so the job was not "
                    "submitted (nothing ran). On the head, dashboard_agent.log in the Ray session's logs folder "
                    "(/tmp/ray/session_latest/logs) says why; a port already in use is the usual cause "
                    "(see `ray start --dashboard-agent-listen-port`). The cluster said: "
                    f"{type(e).__name__}: {e}") from None
            time.sleep(1.0)


def follow(submission_id: str, address: str | None, out=sys.stdout) -> str:
    """Print the job's logs as they come until it ends; return its final status."""
    c = client(address)

    async def tail() -> None:
        async for chunk in c.tail_job_logs(submission_id):
            out.write(chunk)
            out.flush()

    asyncio.run(tail())
    while (status := str(c.get_job_status(submission_id)).split(".")[-1]) not in TERMINAL:
        time.sleep(0.5)  # the log stream can close a moment before the status turns terminal
    return status


def exit_code(submission_id: str, address: str | None) -> int:
    info = client(address).get_job_info(submission_id)
    if info.driver_exit_code is not None:
        return int(info.driver_exit_code)
    return 0 if str(info.status).endswith("SUCCEEDED") else 1


def describe(submission_id: str, address: str | None) -> str:
    info = client(address).get_job_info(submission_id)
    meta = info.metadata or {}
    lines = [f"submission {submission_id}: {str(info.status).split('.')[-1]}"]
    if info.message:
        lines.append(f"  {info.message}")
    if info.driver_exit_code is not None:
        lines.append(f"  exit code {info.driver_exit_code}")
    if meta.get("rushes_output"):
        lines.append(f"  run {meta.get('rushes_run_id')} -> {meta['rushes_output']} "
                     f"(rushes status {meta['rushes_output']})")
    return "\n".join(lines)


def logs(submission_id: str, address: str | None) -> str:
    return client(address).get_job_logs(submission_id)
