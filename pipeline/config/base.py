"""The strict base of every config model, and the Dask section shared by runs and predict."""
from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)



class DaskConfig(Strict):
    address: Optional[str] = None  # an existing scheduler; None: a local cluster
    n_workers: int = 1
    # One task at a time per worker: torch's own threads use the cores inside a task.
    threads_per_worker: int = 1
    # the local cluster's dashboard; loopback unless you choose to expose it
    dashboard_address: str = "127.0.0.1:8787"

