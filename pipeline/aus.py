"""AU registry: the fifteen AUs of the paper's Table I, and the AU sets of each dataset.

Everything that names an AU column goes through this module, so a column is always `AU01`,
never `au1` or `AU1`.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


@dataclass(frozen=True)
class ActionUnit:
    number: int
    name: str
    location: str  # on an aligned face, in units of the inner-eye-corner distance ("scale")
    muscle: str
    landmarks: str  # 0-based iBUG-68 indices of the region of interest (paper's Table I)

    @property
    def column(self) -> str:
        return au_column(self.number)


def au_column(number: int) -> str:
    return f"AU{number:02d}"


# Paper, Table I (muscle of AU25 copied as printed there).
TABLE_I: tuple[ActionUnit, ...] = (
    ActionUnit(1, "Inner brow raiser", "1/2 scale above inner brow", "Frontalis", "21,22"),
    ActionUnit(2, "Outer brow raiser", "1/3 scale above outer brow", "Frontalis", "17,26"),
    ActionUnit(4, "Brow lowerer", "1/3 scale below brow center", "Corrugator supercilii",
               "midpoint of 21,22"),
    ActionUnit(6, "Cheek raiser", "1 scale below eye bottom", "Orbicularis oculi",
               "midpoint of 2,14, midpoint of 41,46"),
    ActionUnit(7, "Lid tightener", "Eye", "Orbicularis oculi", "38,43"),
    ActionUnit(9, "Nose wrinkler", "1/2 scale above nose bottom", "Levator labii superioris",
               "1/2 scale below 39,42"),
    ActionUnit(10, "Upper lip raiser", "Upper lip center", "Levator labii superioris", "50,52"),
    ActionUnit(12, "Lip corner puller", "Lip corner", "Zygomaticus major", "48,54"),
    ActionUnit(14, "Dimpler", "Lip corner", "Buccinator", "48,54"),
    ActionUnit(15, "Lip corner depressor", "Lip corner", "Triangularis", "48,54"),
    ActionUnit(17, "Chin raiser", "1/2 scale below lip", "Mentalis", "1/2 scale below 56,58"),
    ActionUnit(23, "Lip tightener", "Lip center", "Orbicularis oris", "51,57"),
    ActionUnit(24, "Lip presser", "Lip center", "Orbicularis oris", "51,57"),
    ActionUnit(25, "Lips part", "Lip center", "Orbicularis oculi", "51,57"),
    ActionUnit(26, "Jaw drop", "1/2 scale below lip.", "Mentalis", "1/2 scale below 56,58"),
)
REGISTRY: dict[int, ActionUnit] = {au.number: au for au in TABLE_I}
# An AU is present where its probability reaches this (the paper's protocol; eval.threshold and
# a bundle's per-AU thresholds default to it).
DECISION_THRESHOLD = 0.5


class AUSet(str, Enum):
    """Closed set of AU label sets; the value is the config spelling."""

    BP4D = "bp4d"  # 12 AUs
    DISFA = "disfa"  # 8 AUs
    ABAW12 = "abaw12"  # Aff-Wild2 ABAW AU track, 12 AUs
    AFFWILD2_PAPER = "affwild2_paper"  # the 8 AUs the paper used on Aff-Wild2
    # The union of BP4D's 12 and DISFA's 8 (ABAW's 12 fall inside too): the AUs of the reference's
    # cross_model.pth, and of runs that mix datasets (each labels only some of them).
    UNION15 = "union15"

    @property
    def numbers(self) -> tuple[int, ...]:
        return AU_SETS[self]

    @property
    def columns(self) -> list[str]:
        return [au_column(n) for n in AU_SETS[self]]


AU_SETS: dict[AUSet, tuple[int, ...]] = {
    AUSet.BP4D: (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24),
    AUSet.DISFA: (1, 2, 4, 6, 9, 12, 25, 26),
    AUSet.ABAW12: (1, 2, 4, 6, 7, 10, 12, 15, 23, 24, 25, 26),
    AUSet.AFFWILD2_PAPER: (1, 2, 4, 6, 12, 15, 20, 25),
    AUSet.UNION15: (1, 2, 4, 6, 7, 9, 10, 12, 14, 15, 17, 23, 24, 25, 26),
}


def union_of(sets) -> AUSet:
    """The built-in AU set that is the union of `sets` (mixed runs); a clear error if none is."""
    numbers = set().union(*(AU_SETS[AUSet(s)] for s in sets))
    for candidate in AUSet:
        if set(AU_SETS[candidate]) == numbers:
            return candidate
    if numbers <= set(AU_SETS[AUSet.UNION15]):
        return AUSet.UNION15
    extra = sorted(numbers - set(AU_SETS[AUSet.UNION15]))
    raise ValueError(f"the AU sets {[AUSet(s).value for s in sets]} cover AUs {extra} outside the "
                     f"built-in union ({AUSet.UNION15.value}: BP4D and DISFA's 15 AUs)")
