"""The types every stage shares: a plan of units and a unit's result (see stages.runner).

Kept apart from the runner on purpose: stage modules import this file, so it is part of every
artifact's code key (store.codekey), and it changes rarely; the runner can change freely.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class Plan:
    units: list  # picklable unit records with `.name` and `.size`
    skipped: list[str] = field(default_factory=list)  # names of up-to-date units
    context: dict = field(default_factory=dict)  # small facts `finish` needs


@dataclass(frozen=True)
class UnitResult:
    unit: str
    ok: bool
    seconds: float
    data: dict = field(default_factory=dict)
    error: Optional[str] = None  # one line for a UserError; type and message for a bug
    trace: Optional[str] = None  # traceback of a bug
    transient: bool = False  # an I/O error a retry may get past (pipeline.errors.is_transient)
