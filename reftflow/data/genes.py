"""Seeded synthetic rare-disease cases: rank the causal gene from a list of symptoms (`data.task: genes`).

Modelled on hosted RFT's rare-disease showcase (a model lists candidate genes for a patient's symptoms,
graded by the rank of the true gene with `ranked_list`). The world is small and fixed (`WORLD_SEED`):
`NUM_GENES` made-up gene symbols, each with a profile of `PROFILE_SIZE` symptoms from `SYMPTOMS`; profiles
overlap (no two share more than `MAX_SHARED`), so a case has look-alike genes. A case lists most of its
gene's profile plus noise symptoms as present, and a few symptoms of look-alike genes as absent
(`-ataxia`). Cases, not the world, come from the data seed, so every split of every seed asks about the
same genes. The reference completion is the causal gene, then the two genes that best fit the case
after it, comma-separated (the example grader's `separator: ","`): ` KRT14, ABCA4, PAX3`.

Short symptom tokens keep prompt + completion well under the default character model's 256 tokens.
"""

from __future__ import annotations

import random
from functools import lru_cache

from reftflow.data.records import Record

INSTRUCTION = "List the most likely causal genes, most likely first."
SEPARATOR = ","
"""what separates the genes of a completion: the example grader's `separator`."""

WORLD_SEED = 1729
NUM_GENES = 40
PROFILE_SIZE = 4
MAX_SHARED = 2
"""no two genes share more than this many profile symptoms."""

SYMPTOMS = [
    "rash", "ptosis", "ataxia", "seizure", "deaf", "myopia", "scoliosis", "tremor", "anemia", "cataract",
    "ichthyosis", "hypotonia", "spasticity", "nystagmus", "alopecia", "blisters", "jaundice", "obesity",
    "dwarfism", "macroceph", "microceph", "cleft", "polydact", "syndact", "hepatomeg", "splenomeg",
    "cardiomyo", "arrhythmia", "myopathy", "neuropathy", "retinopath", "glaucoma", "coloboma", "anosmia",
    "dysphagia", "dystonia", "chorea", "dementia", "autism", "dev.delay", "hernia", "kyphosis", "contracture",
    "fractures", "osteopenia", "hypoglyc", "acidosis", "proteinuria", "renal cyst", "hematuria", "thrombosis",
    "bleeding", "infections", "eczema", "photophob", "vertigo", "hypertelor", "albinism", "freckles", "goiter",
]
_CONSONANTS = "BCDFGHKLMNPRSTVWXZ"
_LETTERS = "ABCDEFGHIKLMNOPRSTUVWXYZ"


def _symbol(rng: random.Random) -> str:
    """A gene-like symbol: a consonant, 1-3 more letters, a number (KRT14, ABCA4 style)."""
    root = rng.choice(_CONSONANTS) + "".join(rng.choice(_LETTERS) for _ in range(rng.randint(1, 3)))
    return f"{root}{rng.randint(1, 19)}"


@lru_cache(maxsize=None)
def world(seed: int = WORLD_SEED) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The genes and their symptom profiles: ((symbol, profile), ...), the same for the same seed.

    Each profile has `PROFILE_SIZE` symptoms; two profiles share at most `MAX_SHARED`, and every
    symptom is used by some gene, so symptoms are shared between genes without any gene being a copy."""
    rng = random.Random(seed)
    symbols: list[str] = []
    while len(symbols) < NUM_GENES:
        s = _symbol(rng)
        if s not in symbols:
            symbols.append(s)
    uses = {s: 0 for s in SYMPTOMS}
    profiles: list[frozenset[str]] = []
    while len(profiles) < NUM_GENES:
        # the least used symptoms first (ties at random): every symptom ends up in some profile
        order = sorted(SYMPTOMS, key=lambda s: (uses[s], rng.random()))
        prof = frozenset(rng.sample(order[:12], PROFILE_SIZE))
        if all(len(prof & p) <= MAX_SHARED for p in profiles):
            profiles.append(prof)
            for s in prof:
                uses[s] += 1
    return tuple((g, tuple(sorted(p, key=SYMPTOMS.index))) for g, p in zip(symbols, profiles))


def _fit(profile: frozenset[str], present: set[str], absent: set[str]) -> float:
    """How well a gene explains a case: its present symptoms count, its absent ones count against it."""
    return len(profile & present) - 1.5 * len(profile & absent)


def make_case(rng: random.Random, idx: int, min_present: int = 3, noise: tuple[int, int] = (0, 1),
              absent: tuple[int, int] = (1, 2)) -> Record | None:
    """One case of a random gene, or None when another gene would fit it as well (drawn again)."""
    genes = world()
    profiles = [frozenset(p) for _, p in genes]
    g = rng.randrange(len(genes))
    gene, profile = genes[g][0], genes[g][1]
    present = rng.sample(list(profile), rng.randint(min_present, PROFILE_SIZE))
    others = [s for s in SYMPTOMS if s not in profile]
    present += rng.sample(others, rng.randint(*noise))
    # absent: symptoms typical of the look-alikes (genes sharing a present symptom), never of this gene
    lookalike = sorted({s for i, p in enumerate(profiles) if i != g and p & set(present) for s in p}
                       - set(profile) - set(present))
    n_absent = min(rng.randint(*absent), len(lookalike))
    missing = rng.sample(lookalike, n_absent)
    rng.shuffle(present)
    fit = {i: _fit(p, set(present), set(missing)) for i, p in enumerate(profiles)}
    if any(fit[i] >= fit[g] for i in fit if i != g):
        return None
    # distractors: the other genes sharing a present symptom, best fit first
    rivals = sorted((i for i in fit if i != g and profiles[i] & set(present)), key=lambda i: (-fit[i], i))
    if len(rivals) < 2:
        return None
    distractors = [genes[i][0] for i in rivals[:2]]
    case = ", ".join(present + [f"-{s}" for s in missing])
    rid = f"gene-{idx}"
    item = {"id": rid, "case": case, "symptoms_present": present, "symptoms_absent": missing,
            "instruction": INSTRUCTION, "gene": gene}
    return Record(id=rid, item=item, completion=worked_completion([gene, *distractors]))


def worked_completion(ranked: list[str]) -> str:
    """What SFT imitates: the genes, most likely first, separated by `SEPARATOR`."""
    return " " + f"{SEPARATOR} ".join(ranked)


def generate(n: int, seed: int) -> list[Record]:
    """n distinct cases, identical for the same arguments (one private RNG, no global state)."""
    from reftflow.data.synthetic import distinct

    return distinct(n, seed, make_case, "case", "gene cases")
