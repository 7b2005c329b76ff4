"""Why a run stopped without finishing: the errors `rushes run` reports with exit code 1.

Each message says what is kept (every committed record) and how to go on (run again to resume).
"""
from __future__ import annotations


class ClusterError(RuntimeError):
    """The Ray cluster cannot run the job as declared (a stage no node can host)."""


class JobFailed(RuntimeError):
    """The Ray pipeline stopped; every record committed before it is kept, and a re-run resumes."""


class BudgetSpent(JobFailed):
    """The run spent `budget.max_gpu_hours`: it started no new variant and kept what it committed."""
