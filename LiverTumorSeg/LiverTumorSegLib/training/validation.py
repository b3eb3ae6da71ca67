"""Held-out validation inside a training run: what is held out, the network's probabilities there,
the decision threshold chosen on them, and the scores at that threshold.

Validation is by case when there are >= 3 cases and >= 2 of them hold tumors; otherwise the
labels of one z-slab of the liver around one tumor are left out of training (patches may see
its image as context, never its labels); with a single tumor nothing can be held out (mode
"in-sample": the Dice reported is optimistic). A net trained on tumor-rich patches is not
calibrated at 0.5 for a whole liver, so the threshold with the best pooled Dice on held-out
cases is stored in the model. 0.5 is kept when the held-out tumors were hardly found at all, and
when no whole case was held out: a slab of one case, let alone the trained-on voxels, is too
little evidence (on the real case's two halves the slab's choice swung between 0.05 and 0.75 and
cost 0.06 Dice against 0.5; benchmarks/RESULTS.md, "Retrain that learns the user's scanner").
Arrays are (z, y, x) on the working grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.lesions import count_lesions, label_lesions

THRESHOLDS = tuple(float(t) for t in np.round(np.arange(0.05, 0.951, 0.05), 2))
# Below this best validation Dice the held-out tumors were hardly found, and the curve says more
# about noise than about calibration: the threshold stays at 0.5.
MIN_EVIDENCE_DICE = 0.2


@dataclass
class Split:
    """Which prepared cases train (`train`, indices), where their patch centres may lie
    (`allowed`: index -> (z, y, x) bool, absent = anywhere), and the validation pieces:
    (case index, (z0, z1) slab or None for the whole case); mode: cases | region | in-sample."""

    train: list
    allowed: dict
    validation: list
    mode: str


def split_validation(prepared: list, settings, rng: np.random.Generator) -> Split:
    """Hold out cases, or a z-slab around one tumor, or nothing (the module docstring)."""
    n = len(prepared)
    with_tumor = [i for i, p in enumerate(prepared) if p.tumor.any()]
    n_components = [count_lesions(prepared[i].tumor) for i in range(n)]
    mode = settings.validation
    if mode == "auto":
        mode = "cases" if n >= 3 and len(with_tumor) >= 2 else ("region" if sum(n_components) >= 2 else "in-sample")
    if mode == "cases" and len(with_tumor) >= 2 and n >= 2:
        k = min(len(with_tumor) - 1, max(1, int(round(settings.val_fraction * n))))
        held = sorted(int(i) for i in rng.permutation(with_tumor)[:k])
        return Split([i for i in range(n) if i not in held], {}, [(i, None) for i in held], "cases")
    if mode in ("cases", "region") and sum(n_components) >= 2:
        return _region_split(prepared, n_components, settings, rng)
    return Split(list(range(n)), {}, [(i, None) for i in range(n)], "in-sample")


def _region_split(prepared, n_components, settings, rng) -> Split:
    """Leave out a z-slab (val_fraction of the liver's height, at least a quarter patch) centred on
    one tumor of the case with the most tumors. Only the slab's labels are withheld: training
    patches may reach into it as context (their loss is 0 there, patches.CaseSampler), so a
    single annotated case still trains on every tumor outside the slab."""
    from scipy import ndimage

    i = int(np.argmax(n_components))
    p = prepared[i]
    components, count = label_lesions(p.tumor)
    centres = ndimage.center_of_mass(p.tumor, components, range(1, count + 1))
    zc = int(round(centres[int(rng.integers(count))][0]))
    liver_z = np.flatnonzero(p.liver.any(axis=(1, 2)))
    height = max(settings.patch_size // 4, int(round(settings.val_fraction * (liver_z[-1] - liver_z[0] + 1))))
    z0 = max(0, zc - height // 2)
    z1 = min(p.shape[0], z0 + height)
    allowed = np.ones(p.shape, dtype=bool)
    allowed[z0:z1] = False
    if not (p.tumor & allowed).any() and all(not q.tumor.any() for j, q in enumerate(prepared) if j != i):
        return Split(list(range(len(prepared))), {}, [(j, None) for j in range(len(prepared))], "in-sample")
    return Split(list(range(len(prepared))), {i: allowed}, [(i, (z0, z1))], "region")


def validation_pieces(network, prepared, split: Split, clock, stage: str = "validate") -> list:
    """[(probability, liver, truth, spacing)] on the working grid for each validation piece
    (a held-out slab gets 16 voxels of context on each side, then is cut back)."""
    from ..core.inference import predict_probability

    clock.report(stage, 0, len(split.validation))
    pieces = []
    for k, (i, slab) in enumerate(split.validation):
        clock.check()
        p = prepared[i]
        z0, z1 = slab if slab is not None else (0, p.shape[0])
        lo, hi = max(0, z0 - 16), min(p.shape[0], z1 + 16)
        prob = predict_probability(network, p.features[:, lo:hi])[z0 - lo : z1 - lo]
        pieces.append((prob, p.liver[z0:z1], p.tumor[z0:z1], p.work_spacing_zyx))
        clock.report(stage, k + 1, len(split.validation))
    return pieces


def validate(pieces: list, split: Split, settings) -> dict:
    """Over the validation pieces (validation_pieces, computed once per trained network): the
    threshold with the best pooled Dice inside the liver (histograms give every threshold at
    once; ties go to the one nearest 0.5), then Dice and lesion F1 at that threshold with the
    post-processing inference applies."""
    edges = np.concatenate([[0.0], np.asarray(THRESHOLDS), [1.0 + 1e-6]])
    tumor_hist = np.zeros(len(edges) - 1)
    other_hist = np.zeros(len(edges) - 1)
    for prob, liver, truth, _ in pieces:
        tumor_hist += np.histogram(prob[liver & truth], edges)[0]
        other_hist += np.histogram(prob[liver & ~truth], edges)[0]
    # Voxels at or above THRESHOLDS[j] are the histogram bins j+1 onwards.
    true_total = tumor_hist.sum()
    if true_total == 0:
        return {"dice": None, "threshold": 0.5, "mode": split.mode, "dice_at_0.5": None}
    tp = np.cumsum(tumor_hist[::-1])[::-1][1:]
    predicted = tp + np.cumsum(other_hist[::-1])[::-1][1:]
    dice_raw = 2 * tp / np.maximum(predicted + true_total, 1)
    # Keep 0.5 without held-out cases (a slab, or nothing: too little evidence) and when the held-out
    # tumors were hardly found.
    if split.mode != "cases" or dice_raw.max() < MIN_EVIDENCE_DICE:
        best, source = THRESHOLDS.index(0.5), "default"
    else:
        best, source = int(np.argmax(dice_raw - 1e-9 * np.abs(np.asarray(THRESHOLDS) - 0.5))), "validation"
    threshold = float(THRESHOLDS[best])
    at_threshold = lesion_scores(pieces, threshold, settings.min_lesion_mm3)
    at_half = at_threshold if threshold == 0.5 else lesion_scores(pieces, 0.5, settings.min_lesion_mm3)
    return {
        "dice": round(at_threshold["dice"], 4),
        "lesion_f1": None if at_threshold["lesion_f1"] is None else round(at_threshold["lesion_f1"], 4),
        "threshold": threshold,
        "threshold_source": source,
        "threshold_objective": "dice",  # constant now; kept so model.json's validation keeps its shape for older readers
        "mode": split.mode,
        "dice_at_0.5": round(at_half["dice"], 4),
        "dice_by_threshold": {f"{t:.2f}": round(float(d), 4) for t, d in zip(THRESHOLDS, dice_raw)},
    }


def lesion_scores(pieces, threshold: float, min_lesion_mm3: float) -> dict:
    """Pooled voxel Dice and lesion F1 over the validation pieces at one threshold, with the
    post-processing inference applies (specks and liver-surface slivers removed). Lesion F1 is
    None unless the pieces hold both true and predicted lesions."""
    from ..core.inference import mask_from_probability
    from ..evaluation.metrics import lesion_detection, lesion_f1

    inter = pred = true = found = n_true = matched = n_pred = 0
    for prob, liver, truth, spacing in pieces:
        mask = mask_from_probability(prob, liver, threshold, spacing, min_lesion_mm3)
        inter += np.count_nonzero(mask & truth)
        pred += np.count_nonzero(mask)
        true += np.count_nonzero(truth)
        det = lesion_detection(mask, truth, float(np.prod(spacing)))
        found, n_true, matched, n_pred = found + det["found"], n_true + det["n_true"], matched + det["matched"], n_pred + det["n_pred"]
    f1 = lesion_f1(matched / n_pred, found / n_true, n_pred, n_true) if n_pred and n_true else None
    return {"dice": 2.0 * inter / max(pred + true, 1), "lesion_f1": f1}
