"""The strict base of every config model, and the Dask section shared by runs and predict."""
from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)



class DaskConfig(Strict):
    address: Optional[str] = None  # an existing scheduler; None: a local cluster
    n_workers: int = 1
    # One task at a time per worker: torch's own threads use the cores inside a task.
    threads_per_worker: int = 1
    # the local cluster's dashboard; loopback unless you choose to expose it
    dashboard_address: str = "127.0.0.1:8787"
    # a stage whose cluster has had no worker for this long while units remain stops (exit 1,
    # one line; a rerun resumes) instead of waiting for one forever; None: wait forever
    no_workers_timeout_s: Optional[float] = Field(default=60.0, gt=0)

