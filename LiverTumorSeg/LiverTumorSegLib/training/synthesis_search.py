"""The segmenter steers the synthesis (GenSeg's principle, on a CPU budget): `train --synthesis auto`.

Inside one training run, within the same step budget as `fixed` or `off`:

1. trunk: the first `TRUNK_SHARE` (60 %) of the steps train on the real cases plus every
   candidate's synthetic cases (a neutral mix: no candidate is the trunk's own mix continued,
   so no fork pays for a switch). The forks start late, from a model that already segments:
   earlier, held-out Dice is too noisy to rank them (benchmarks/RESULTS.md, "Synthesis steered
   by the segmenter");
2. forks: from the trunk's weights, optimiser and EMA, each candidate (`default_candidates`: off,
   fixed, and the family's small-and-hyperdense member at 2 copies per real case, the
   synthetic-to-real ratio) trains `fork` steps on its own data mix (loop.Run.fork); the search
   costs (candidates - 1) x fork steps, `synthesis_search_share` of the budget (16 %);
3. score: each fork (a short EMA of its weights) is scored on the held-out *real* validation
   pieces only (never on synthetic data): 0.5 x (voxel Dice at the best threshold + lesion F1);
4. choose (the guard, below), then the winner's fork continues for the rest of the budget.

Guard against overfitting one held-out piece: with 7 tumors the validation is one case or one
slab holding 2-3 tumors, and picking the best of several forks on it mostly picks noise. So a
candidate replaces the reference (`fixed`, the measured default) only if it beats it by more than
MARGIN on the whole validation AND on every leave-one-tumor-out subset (the validation with one
held-out tumor's neighbourhood removed): no single tumor may decide. With fewer than 2 held-out
tumors nothing can replace the reference. Whatever is chosen never scores below `off` on the
whole validation (then `off` is taken). model.json records every candidate's scores, the
leave-one-out choices and whether the unguarded best would have changed with any one tumor left
out (`stable_under_leave_one_out`), which is how often the search would have followed one piece.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..data.synthesis_family import SynthesisFamily
from .loop import EMA, Run
from .validation import validate, validation_pieces

TRUNK_SHARE = 0.6
MARGIN = 0.01
MIN_SEARCH_STEPS = 100
UNIT_MARGIN_MM = 10.0
FORK_EMA_DECAY = 0.9
REFERENCE = "fixed"


@dataclass
class Candidate:
    """A data mix: `copies` synthetic variants per real training case, made by `family` (a
    SynthesisFamily) or by the fixed recipe (family None, copies > 0) or none (copies 0)."""

    name: str
    copies: int
    family: SynthesisFamily | None = None

    def to_dict(self) -> dict:
        recipe = "none" if self.copies == 0 else "fixed (synthesis.synthetic_copy)" if self.family is None else "family"
        return {"name": self.name, "copies": self.copies, "recipe": recipe,
                "family": None if self.family is None else self.family.to_dict()}


def default_candidates() -> list[Candidate]:
    """off, fixed and the small-and-hyperdense family member (2 copies): what the network misses
    most (small and hyperdense tumors). Three: every candidate more is one more losing fork
    (benchmarks/RESULTS.md, "Synthesis steered by the segmenter")."""
    return [
        Candidate("off", 0),
        Candidate(REFERENCE, 1),
        Candidate("family_small_hyper", 2, SynthesisFamily(diameter_mm=(5.0, 25.0), size_skew="small", count=(2, 4),
                                                           hyper_fraction=0.5, edge_mm=(0.3, 1.0), lobulation=0.3,
                                                           paste=(1, 1))),
    ]


def resolve_mode(requested: str, synthetic_copies: int, n_tumors: int) -> tuple[str, str]:
    """(off | fixed | auto, why). "default": fixed, whatever the number of tumors (auto measured
    no better: benchmarks/RESULTS.md, "Synthesis steered by the segmenter"), so auto is asked for
    only. synthetic_copies 0 means off unless auto was asked for."""
    if requested == "auto":
        return "auto", "asked for"
    if synthetic_copies == 0:
        return "off", "synthetic_copies is 0" if requested != "off" else "asked for"
    if requested == "default":
        return "fixed", f"default (auto measured no better; {n_tumors} labelled tumors)"
    return requested, "asked for"


def plan_steps(budget: int, n_candidates: int, share: float) -> dict | None:
    """{trunk, fork, final} steps with trunk + n x fork + final = budget; None if too small.
    The forks are capped so that they fit after the trunk (with 2 candidates a share above 0.2
    would not); search_share is the share the losing forks really take."""
    if budget < MIN_SEARCH_STEPS or n_candidates < 2:
        return None
    trunk = int(round(TRUNK_SHARE * budget))
    fork = min(max(5, int(round(share * budget / (n_candidates - 1)))), (budget - trunk) // n_candidates)
    if fork < 5:
        return None
    final = budget - trunk - n_candidates * fork
    return {"budget_steps": budget, "trunk_steps": trunk, "fork_steps": fork, "final_steps": final,
            "search_share": round((n_candidates - 1) * fork / budget, 4), "requested_search_share": share}


# ---- scoring ---------------------------------------------------------------------------------

def validation_units(pieces: list) -> list[tuple[int, tuple]]:
    """(piece index, box) of every held-out tumor, the box grown by UNIT_MARGIN_MM."""
    from scipy import ndimage

    from ..core.lesions import label_lesions

    units = []
    for k, (_, _, truth, spacing) in enumerate(pieces):
        components, _ = label_lesions(truth)
        pad = [int(np.ceil(UNIT_MARGIN_MM / s)) for s in spacing]
        for box in ndimage.find_objects(components):
            units.append((k, tuple(slice(max(b.start - p, 0), b.stop + p) for b, p in zip(box, pad))))
    return units


def _without(pieces: list, unit) -> list:
    k, box = unit
    out = list(pieces)
    prob, liver, truth, spacing = pieces[k]
    liver, truth = liver.copy(), truth.copy()
    liver[box] = False
    truth[box] = False
    out[k] = (prob, liver, truth, spacing)
    return out


def score_pieces(pieces: list, split, settings) -> dict:
    """0.5 x (Dice at the best validation threshold + lesion F1 there) over the pieces."""
    v = validate(pieces, split, settings)
    if v["dice"] is None:
        return {"score": None, "dice": None, "lesion_f1": None, "threshold": v["threshold"]}
    f1 = v["lesion_f1"] or 0.0
    return {"score": round(float(0.5 * (v["dice"] + f1)), 4), "dice": float(v["dice"]),
            "lesion_f1": None if v["lesion_f1"] is None else float(v["lesion_f1"]), "threshold": float(v["threshold"])}


def choose(scores: dict, loo: dict, reference: str = REFERENCE, margin: float = MARGIN) -> dict:
    """The guarded choice. scores: {name: whole-validation score}; loo: {name: [score per
    leave-one-tumor-out subset]} (same order for every name). Returns chosen, why, robust gains
    over the reference, the unguarded best, and the unguarded best per left-out tumor."""
    names = list(scores)
    n_units = len(next(iter(loo.values()))) if loo else 0
    gains = {}
    for name in names:
        if name == reference or scores[name] is None or scores[reference] is None:
            continue
        diffs = [scores[name] - scores[reference]]
        if n_units >= 2:
            diffs += [a - b for a, b in zip(loo[name], loo[reference]) if a is not None and b is not None]
        gains[name] = round(min(diffs), 4) if n_units >= 2 else None
    challengers = [n for n, g in gains.items() if g is not None and g > margin]
    if scores.get(reference) is None:
        chosen, why = reference, "no score for the reference (no held-out tumor): the reference is kept"
    elif challengers:
        chosen = max(challengers, key=lambda n: scores[n])
        why = f"beats {reference} by more than {margin} on the whole validation and with any one held-out tumor left out"
    else:
        chosen = reference
        why = (f"no candidate beats {reference} by more than {margin} with every held-out tumor left out in turn"
               if n_units >= 2 else f"fewer than 2 held-out tumors: nothing may replace {reference}")
    if "off" in scores and scores["off"] is not None and scores.get(chosen) is not None and scores[chosen] < scores["off"]:
        chosen, why = "off", f"{chosen} scored below off on the whole validation"

    def best(values):
        ok = {n: v for n, v in values.items() if v is not None}
        return max(ok, key=ok.get) if ok else None

    unguarded = best(scores)
    per_unit = [best({n: loo[n][u] for n in names}) for u in range(n_units)]
    return {"chosen": chosen, "why": why, "robust_gain_vs_reference": gains, "unguarded_best": unguarded,
            "leave_one_out_best": per_unit, "stable_under_leave_one_out": all(b == unguarded for b in per_unit)}


# ---- the forked training ---------------------------------------------------------------------

def search_and_fit(network, base_samplers: list, make_samplers, settings, split, prepared, lr, rng, deadline, clock,
                   candidates: list | None = None):
    """Trunk, forks, guarded choice, the winner's rest (module docstring). make_samplers(candidate,
    index) -> that candidate's synthetic CaseSamplers. Returns (EMA network, steps, last loss,
    synthetic cases the model trained on, meta for model.json's "synthesis") or None when the
    budget or the validation cannot carry a search (the caller falls back to fixed). The synthetic
    count is the winner's own (the trunk saw every candidate's), or the trunk's when the time cap
    ended the run during the trunk."""
    start = time.perf_counter()
    candidates = candidates or default_candidates()
    names = [c.name for c in candidates]
    plan = plan_steps(settings.max_steps, len(candidates), settings.synthesis_search_share)
    if plan is None or split.mode == "in-sample" or not split.validation or REFERENCE not in names:
        return None
    pools, union = {}, list(base_samplers)
    for k, c in enumerate(candidates):
        own = make_samplers(c, k) if c.copies else []
        pools[c.name] = base_samplers + own
        union += [s for s in own if all(s is not u for u in union)]
    trunk = Run(network, lr, settings.ema_decay, rng)
    trunk.train(union, settings, plan["trunk_steps"], deadline, clock)
    if time.perf_counter() >= deadline:  # the time cap, not the plan, ended it: keep what trained
        return trunk.ema.network, trunk.step, trunk.loss, len(union) - len(base_samplers), {
            "mode": "auto", "plan": plan, "chosen": None, "candidates": [], "trunk_cases": len(union),
            "why": ("the time cap ran out during the trunk, before any candidate was scored: the trunk's model is kept "
                    "(the real cases and every candidate's synthetic cases)"),
            "steps_by_stage": {"trunk": trunk.step}, "seconds": round(time.perf_counter() - start, 1)}
    forks, rows, pieces_by = {}, [], {}
    for k, c in enumerate(candidates):
        run = trunk.fork(np.random.default_rng([settings.seed, 104729, k]))
        local = EMA(run.network, FORK_EMA_DECAY)
        run.train(pools[c.name], settings, plan["fork_steps"], deadline, clock, local_ema=local)
        forks[c.name] = run
        pieces_by[c.name] = validation_pieces(local.network.eval(), prepared, split, clock, stage="synthesis search")
    units = validation_units(pieces_by[REFERENCE])
    scores, loo = {}, {}
    for c in candidates:
        whole = score_pieces(pieces_by[c.name], split, settings)
        left_out = [score_pieces(_without(pieces_by[c.name], u), split, settings)["score"] for u in units] if len(units) >= 2 else []
        scores[c.name], loo[c.name] = whole["score"], left_out
        rows.append({**c.to_dict(), **whole, "leave_one_out_scores": left_out, "pool_cases": len(pools[c.name])})
    decision = choose(scores, loo)
    winner = forks[decision["chosen"]]
    winner.train(pools[decision["chosen"]], settings, plan["final_steps"], deadline, clock)
    chosen = next(c for c in candidates if c.name == decision["chosen"])
    meta = {
        "mode": "auto", "plan": plan, "reference": REFERENCE, "margin": MARGIN,
        "trunk": f"real cases and every candidate's synthetic cases ({len(union)} cases)", "trunk_cases": len(union),
        "chosen": chosen.name, "chosen_settings": chosen.to_dict(),
        "objective": "0.5 x (Dice at the best threshold + lesion F1) on the held-out real validation pieces",
        "guard": ("a candidate replaces the reference only if it beats it by more than the margin on the whole validation "
                  "and with each held-out tumor left out in turn; never below off"),
        "held_out_tumors": len(units), "candidates": rows, **decision,
        "steps_by_stage": {"trunk": plan["trunk_steps"], "forks": plan["fork_steps"] * len(candidates),
                           "winner": winner.step},
        "seconds": round(time.perf_counter() - start, 1),
    }
    return winner.ema.network, winner.step, winner.loss, len(pools[chosen.name]) - len(base_samplers), meta


def describe(synthesis: dict | None) -> str:
    """One line for people: which synthetic data a model was trained with and why (model.json's
    "synthesis"); "" for models from before the setting existed."""
    if not synthesis:
        return ""
    mode = synthesis.get("mode")
    if mode != "auto" or not synthesis.get("chosen"):
        return f"synthetic data: {mode} ({synthesis.get('why', '')})"
    listed = synthesis.get("candidates")
    rows = {r["name"]: r for r in listed if isinstance(r, dict) and "name" in r} if isinstance(listed, list) else {}
    chosen = rows.get(synthesis["chosen"], {})

    def score(name):
        value = rows.get(name, {}).get("score")
        return f"{value:.3f}" if isinstance(value, (int, float)) else "n/a"

    return (f"synthetic data chosen by the segmenter: {synthesis['chosen']} ({chosen.get('copies', 0)} per case), "
            f"validation score {score(synthesis['chosen'])} against off {score('off')} and fixed {score(REFERENCE)}, "
            f"{len(rows)} tried on {synthesis.get('held_out_tumors', 0)} held-out tumors")
