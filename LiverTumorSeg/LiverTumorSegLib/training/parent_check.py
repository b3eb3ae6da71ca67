"""Is a fine-tuned model (the child) worse than the model it started from (its parent)?

Both are scored, each at its own threshold, on the check set (held-out phantoms of the default
recipe: what the parent knew) and on the user's validation pieces (what the user asked for);
model.json's "parent_check" records both and where the child lost.
"""

from __future__ import annotations

from ..storage.modelstore import TrainedModel
from .validation import Split, lesion_scores, validation_pieces

# A fine-tuned child whose Dice falls more than this below its parent's is marked worse.
PARENT_TOLERANCE = 0.02


def parent_check(child: TrainedModel, parent: TrainedModel, prepared, split: Split, child_pieces: list,
                 settings, clock) -> dict:
    """Score child and parent (`child_pieces`: the child's validation pieces, already computed
    by validation). worse_than_parent: more than PARENT_TOLERANCE lower on either set."""
    from ..core.inference import segment
    from ..evaluation.metrics import evaluate_case, summarize
    from .rehearsal import check_cases

    rows = {"parent": [], "child": []}
    cases = check_cases(settings.check_cases)
    for k, (_, image, labels) in enumerate(cases):
        clock.report("parent check", k, len(cases))
        clock.check()
        liver, truth = labels.array > 0, labels.array == 2
        for who, model in (("parent", parent), ("child", child)):
            rows[who].append(evaluate_case(segment(image, liver, model).tumor.array > 0, truth, image.spacing_zyx))
    keep = ("dice_mean", "lesion_f1_pooled", "recall_by_size", "precision_by_size")
    check = {who: {k: summarize(r)[k] for k in keep} for who, r in rows.items()} if cases else {}
    user = {}
    if split.mode != "in-sample" and split.validation:
        parent_pieces = validation_pieces(parent.network, prepared, split, clock, stage="parent check")
        for who, model, pieces in (("parent", parent, parent_pieces), ("child", child, child_pieces)):
            user[who] = lesion_scores(pieces, model.threshold, settings.min_lesion_mm3)
    worse_on = [name for name, scores, key in (("check set", check, "dice_mean"), ("your validation", user, "dice"))
                if scores and scores["child"][key] < scores["parent"][key] - PARENT_TOLERANCE]
    clock.report("parent check", len(cases), len(cases))
    return {
        "parent": parent.meta.get("version") or parent.meta.get("name"),
        "check_cases": [c[0] for c in cases],
        "check_set": check,
        "user_validation": user,
        "parent_validation_dice": check.get("parent", {}).get("dice_mean"),
        "child_on_parent_validation_dice": check.get("child", {}).get("dice_mean"),
        "tolerance": PARENT_TOLERANCE,
        "worse_on": worse_on,
        "worse_than_parent": bool(worse_on),
    }
