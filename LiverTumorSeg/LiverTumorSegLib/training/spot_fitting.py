"""Fitting the spot pass (core/spots.py) on a radiologist's few cases: their candidates, and those
of synthetic copies with small tumors, train a logistic lesion classifier; the decision cut is
chosen on leave-one-case-out scores."""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..core.spots import SpotDetector, SpotSettings, sigmoid, find_candidates
from ..data.synthesis import synthesize_tumors


# Synthetic small tumors added to copies of the training cases, so that the classifier sees
# enough small positives (a radiologist's few cases hold mostly large tumors): 5-20 mm, hypo-
# and hyperdense, sharp-edged (a 1-2 mm blur leaves a 6 mm tumor a third of its contrast).
SYNTHETIC_SMALL = dict(n_tumors=(3, 6), radius_mm=(2.5, 10.0), delta_hu=(30.0, 130.0), hyper_fraction=0.3,
                       edge_sigma_mm=(0.5, 1.5))


SPOT_VARIANTS = 4  # synthetic copies per training case


def spot_fitting_cases(cases, seed: int, variants: int = SPOT_VARIANTS):
    """Yield (group, image, labels array): each training case (case_id, image, labels Volume)
    and `variants` copies of it with synthetic small tumors (deterministic by seed, position and
    copy). A generator: one copy of a large CT in memory at a time."""
    for index, (case_id, image, labels) in enumerate(cases):
        yield case_id, image, labels.array
        for v in range(variants):
            copy_seed = int(np.random.SeedSequence([seed, index, v]).generate_state(1)[0])
            synthetic, synthetic_labels, _ = synthesize_tumors(image, labels.array, copy_seed, **SYNTHETIC_SMALL)
            yield case_id, synthetic, synthetic_labels.array


def fit_spot_detector(cases, settings: SpotSettings | None = None, l2: float = 1.0,
                      check: Callable[[], None] | None = None) -> SpotDetector | None:
    """Fit on (group, image Volume, labels array 0/1/2) items, read once: cases of one group (a
    case and its synthetic variants) are left out together when the cut is chosen. None when
    the candidates hold fewer than 3 tumors or 3 non-tumors (nothing to learn from). `check` is
    called before each case (training's Cancel)."""
    settings = settings or SpotSettings()
    features, targets, groups = [], [], []
    for group, image, labels in cases:
        if check is not None:
            check()
        labels = np.asarray(labels)
        found = find_candidates(image, labels > 0, settings, tumor=labels == 2)
        if found is None:
            continue
        _, _, _, rows, hits = found
        features.append(rows)
        targets.append(hits)
        groups += [group] * len(rows)
    if not features:
        return None
    x, y, groups = np.concatenate(features), np.concatenate(targets), np.asarray(groups)
    if y.sum() < 3 or (1 - y).sum() < 3:
        return None
    mean, scale = x.mean(axis=0), np.maximum(x.std(axis=0), 1e-6)
    xs = (x - mean) / scale
    held_out = np.zeros(len(y))
    for g in np.unique(groups):
        out = groups == g
        if y[~out].sum() < 2 or (1 - y[~out]).sum() < 2:
            w, b = _logistic(xs, y, l2)
        else:
            w, b = _logistic(xs[~out], y[~out], l2)
        held_out[out] = sigmoid(xs[out] @ w + b)
    cut, f1, precision, recall = _best_cut(held_out, y)
    weights, bias = _logistic(xs, y, l2)
    summary = {"candidates": int(len(y)), "tumor_candidates": int(y.sum()), "groups": int(len(np.unique(groups))),
               "held_out_f1": round(float(f1), 4), "held_out_precision": round(float(precision), 4),
               "held_out_recall": round(float(recall), 4)}
    return SpotDetector(settings, mean.round(6).tolist(), scale.round(6).tolist(), weights.round(6).tolist(),
                        round(float(bias), 6), round(float(cut), 4), summary)


def _best_cut(score: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    """The score cut with the best candidate F1 (ties: the higher cut, fewer false spots)."""
    best = (0.5, -1.0, 0.0, 0.0)
    for cut in np.arange(0.05, 0.96, 0.05):
        predicted = score >= cut
        tp = float((predicted & (y > 0)).sum())
        precision = tp / max(predicted.sum(), 1)
        recall = tp / max(y.sum(), 1)
        f1 = 2 * precision * recall / max(precision + recall, 1e-9)
        if f1 >= best[1]:
            best = (float(cut), f1, precision, recall)
    return best


def _logistic(x: np.ndarray, y: np.ndarray, l2: float, iterations: int = 30) -> tuple[np.ndarray, float]:
    """L2-penalised logistic regression by Newton's method (bias not penalised)."""
    xb = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros(xb.shape[1])
    penalty = np.full(xb.shape[1], l2)
    penalty[-1] = 0.0
    for _ in range(iterations):
        p = sigmoid(xb @ w)
        gradient = xb.T @ (p - y) + penalty * w
        hessian = (xb * (p * (1 - p))[:, None]).T @ xb + np.diag(penalty + 1e-6)
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-6:
            break
    return w[:-1], float(w[-1])


