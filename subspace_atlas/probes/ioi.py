"""An IOI-style task (indirect object identification): names × templates, with base/source pairs for patching.

A prompt names two people, then repeats one of them (the subject S) as the giver; the answer is the
other one, the indirect object IO: "Then, Mary and John went to the park. John gave a ball to" → Mary.
A patching pair shares the template and both names but repeats the other name:

    base   "… Mary and John … John gave a ball to"   → Mary  (IO = Mary, S = John)
    source "… Mary and John … Mary gave a ball to"   → John

so the only feature that differs is which of the two names is the subject. Patching the subspace that
carries it from source into base should move the base's answer from Mary towards John: the logit
difference LD = logit(IO) − logit(S) of the base falls (FLDD = 100·(1 − LD_patched / LD_base), 100 %
= no preference left, above 100 % = flipped).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

NAMES = ("Mary", "John", "Alice", "Bob", "Sarah", "James", "Emma", "David", "Laura", "Peter", "Anna", "Mark",
         "Kate", "Paul", "Lucy", "Tom", "Clara", "Sam", "Julia", "Max", "Nina", "Adam", "Rose", "Eric")
PLACES = ("park", "store", "school", "garden", "station", "office", "market", "library")
OBJECTS = ("ball", "book", "drink", "ring", "letter", "bag", "flower", "key")
TEMPLATES = (
    "Then , {A} and {B} went to the {place} . {C} gave a {object} to",
    "When {A} and {B} got a {object} at the {place} , {C} decided to give it to",
    "After {A} and {B} went to the {place} , {C} gave a {object} to",
    "While {A} and {B} were working at the {place} , {C} gave a {object} to",
    "Then , {A} and {B} had a long talk at the {place} . {C} handed a {object} to",
    "Friends {A} and {B} found a {object} at the {place} . {C} gave it to",
    "The {place} was quiet when {A} and {B} arrived . {C} passed a {object} to",
    "At the {place} , {A} and {B} met again . {C} sent a {object} to",
)
HELDOUT_TEMPLATES = 2  # the last two templates are never trained on


@dataclass(frozen=True)
class Pair:
    """One patching pair: ``base`` answers ``io``; ``source`` (the other name repeated) answers ``s``."""

    base: str
    source: str
    io: str
    s: str
    template: int


def vocabulary() -> list[str]:
    """Every word the task uses (for a word-level tokenizer)."""
    words = set(NAMES) | set(PLACES) | set(OBJECTS)
    for template in TEMPLATES:
        words |= {w for w in template.split() if not w.startswith("{")}
    return sorted(words)


def pairs(count: int, seed: int = 0, templates: tuple[int, ...] | None = None,
          names: tuple[str, ...] = NAMES) -> list[Pair]:
    """``count`` patching pairs, seeded; half ABB (IO first) and half BAB (S first) in name order."""
    rng = random.Random(seed)
    chosen = templates if templates is not None else tuple(range(len(TEMPLATES)))
    out = []
    for i in range(count):
        t = chosen[rng.randrange(len(chosen))]
        io, s = rng.sample(names, 2)
        first, second = (io, s) if i % 2 == 0 else (s, io)
        fill = {"A": first, "B": second, "place": rng.choice(PLACES), "object": rng.choice(OBJECTS)}
        out.append(Pair(TEMPLATES[t].format(C=s, **fill), TEMPLATES[t].format(C=io, **fill), io, s, t))
    return out


def train_templates() -> tuple[int, ...]:
    return tuple(range(len(TEMPLATES) - HELDOUT_TEMPLATES))


def heldout_templates() -> tuple[int, ...]:
    return tuple(range(len(TEMPLATES) - HELDOUT_TEMPLATES, len(TEMPLATES)))
