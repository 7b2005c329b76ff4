"""The base of every job-file model: an unknown key is an error, and so is a bad value set later."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """Job-file models: an unknown key is an error, and so is a bad value set after construction."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
