"""Rehearsal data for Retrain: what the default model learned from, regenerated, never stored.

Fine-tuning on one radiologist's few cases raised small-tumor recall there but made the model
over-call on other CTs: it forgot (benchmarks/RESULTS.md, "What a radiologist gets"). So
fine-tuning replays phantoms made by the default model's own recipe (data/phantom.py) beside the
user's cases, and every new version is scored, next to its parent, on a separate check set made
by the same recipe from seeds that no training uses. Both sets are generated deterministically
from fixed seeds in a second or two: nothing large is shipped, nothing is written to the user's
case library.
"""

from __future__ import annotations

from ..data.phantom import PhantomSettings, make_phantom

# Seeds no other data uses: the default model trains on 100-199, benchmarks on 1e6 and up.
REHEARSAL_SEED = 40_000
CHECK_SEED = 41_000


# Tumor kinds of the rehearsal phantoms (hypo, necrotic, rim, hyper): a user's few cases are
# mostly one kind, and the kinds they lack are what fine-tuning forgets first: hyperdense tumors
# get 40 %, above the phantom default's 23 % (benchmarks/RESULTS.md, "What a radiologist gets").
REHEARSAL_KINDS = (0.35, 0.1, 0.15, 0.4)


def _phantoms(first_seed: int, n: int, prefix: str, kinds=REHEARSAL_KINDS) -> list:
    """[(case_id, CT Volume in HU, labels Volume 0/1/2)] of the first n phantoms holding a tumor."""
    settings = PhantomSettings.medium(tumor_kind_weights=kinds, n_tumors=(2, 5))
    out, seed = [], first_seed
    while len(out) < n:
        case = make_phantom(seed, settings)
        if (case.labels.array == 2).any():
            out.append((f"{prefix}-{seed}", case.image, case.labels))
        seed += 1
    return out


def rehearsal_cases(n: int) -> list:
    """n training cases replayed during fine-tuning (medium phantoms: 256 x 256, 2-5 mm slices,
    2-5 tumors each, 40 % of them hyperdense)."""
    return _phantoms(REHEARSAL_SEED, n, "rehearsal") if n > 0 else []


def check_cases(n: int = 3) -> list:
    """The parent/child check set: n held-out phantoms of the same recipe, never trained on."""
    return _phantoms(CHECK_SEED, n, "check") if n > 0 else []
