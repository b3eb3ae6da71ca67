"""Train MHP-Net (or the U-Net baseline) from a handful of labelled cases in minutes on a CPU.

train_model, step by step: prepare every case (liver box, working grid, Hessian channels) ->
hold out validation data (validation.py) -> synthetic copies of the training cases and, when
fine-tuning, rehearsal phantoms (rehearsal.py) -> Adam on Dice + BCE over balanced, augmented
patches inside the liver until max_steps or the time cap (loop.py; with synthesis "auto" inside
the search of synthesis_search.py) -> the moving average of the weights is the model -> the
decision threshold chosen on held-out cases (0.5 without them) -> the spot pass (spot_fitting.py) -> the
intensity floor (core/floor.py) -> when fine-tuning, the parent check (parent_check.py).
Deterministic: the same cases, settings and seed give the same weights (same machine and thread
count; a time cap that ends the run before max_steps ends it at a machine-dependent step).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable

import numpy as np

from ..core.features import FeatureSettings, Prepared, prepare_case
from ..core.lesions import count_lesions
from ..errors import InputError
from ..storage.library import now_iso
from ..storage.modelstore import TrainedModel
from .loop import Clock, fit
from .parent_check import parent_check
from .patches import CaseSampler, polarity_plan
from .settings import TrainSettings
from .synthesis_search import resolve_mode, search_and_fit
from .validation import Split, split_validation, validate, validation_pieces

__all__ = ["TrainSettings", "train_model"]  # TrainSettings: where callers import it from


def train_model(
    cases: list,
    settings: TrainSettings | None = None,
    init: TrainedModel | None = None,
    progress: Callable[[dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainedModel:
    """Train on [(case_id, CT Volume in HU, labels Volume 0/1/2)]. With `init`, fine-tune that model
    (its network and feature settings) on all the given cases, old ones replayed with new ones.
    Raises Cancelled when should_stop() turns true, InputError for unusable cases."""
    settings = settings or TrainSettings()
    start = time.perf_counter()
    clock = Clock(start, progress, should_stop)
    _check_cases(cases)
    features = init.feature_settings if init is not None else settings.feature_settings()
    prepared = _prepare_all(cases, features, clock, "prepare")
    rng = np.random.default_rng(settings.seed)
    split = split_validation(prepared, settings, rng)
    sampler = _sampler_factory(features)
    samplers = [sampler(p, split.allowed.get(i)) for i, p in enumerate(prepared) if i in split.train]
    n_real_tumors = int(sum(s.n_tumors for s in samplers))

    mode, why = resolve_mode(settings.synthesis, settings.synthetic_copies, sum(count_lesions(p.tumor) for p in prepared))
    copies = max(settings.synthetic_copies, 1) if mode == "auto" else settings.synthetic_copies if mode == "fixed" else 0
    synthetic = [sampler(p, allowed)
                 for p, allowed in _synthetic_prepared(cases, prepared, split, copies, _fixed_copy(settings), features, clock)]
    rehearsal = [] if init is None else [sampler(p) for p in _rehearsal_prepared(settings, features, clock)]
    weight = _user_weight(n_real_tumors, len(samplers) + len(synthetic), rehearsal)
    samplers, synthetic = samplers * weight, synthetic * weight
    network, spec = _initial_network(settings, features, init)
    lr = settings.lr * (settings.fine_tune_lr_factor if init is not None else 1.0)
    deadline = start + settings.minutes * 60.0 - _reserve_s(prepared, split, settings, init)

    def candidate_samplers(candidate, index):  # a synthesis search candidate's own synthetic cases
        if candidate.family is None:
            return synthetic
        made = _synthetic_prepared(cases, prepared, split, candidate.copies, _family_copy(settings, candidate, index),
                                   features, clock)
        return [sampler(p, allowed) for p, allowed in made] * weight

    with _deterministic_algorithms():
        trained = None
        if mode == "auto":  # every candidate trains on the real cases and rehearsal plus its own synthetic cases
            trained = search_and_fit(network, samplers + rehearsal, candidate_samplers, settings, split, prepared, lr, rng,
                                     deadline, clock)
        if trained is None:
            trained = (*fit(network, samplers + synthetic + rehearsal, settings, lr, rng, deadline, clock), len(synthetic),
                       _AUTO_FALLBACK if mode == "auto" else {})
    averaged, steps, last_loss, n_synthetic, found = trained
    synthesis = {"requested": settings.synthesis, "mode": mode, "why": why, **found}
    train_seconds = time.perf_counter() - start

    pieces = validation_pieces(averaged, prepared, split, clock)
    validation = validate(pieces, split, settings)
    meta = _meta(cases, settings, init, split, steps, last_loss, validation, train_seconds, averaged, n_real_tumors,
                 n_synthetic // weight, synthesis)
    user = len(samplers) + n_synthetic
    meta["user_share"] = round(user / max(user + len(rehearsal), 1), 3)  # of the cases a patch is drawn from
    meta["spot_detector"] = _spot_detector(cases, init, settings, clock)
    meta["intensity_floor"] = _intensity_floor(cases, settings, clock)
    # The floor relative to each CT's liver (core/relative_floor.py) is the parent's: it is set per
    # CT, not fitted; segment adds its lesions after the intensity floor's (relative_floor.floors_of).
    meta["relative_floor"] = None if init is None else init.meta.get("relative_floor")
    meta["total_seconds"] = round(time.perf_counter() - start, 1)
    averaged.eval()
    model = TrainedModel(averaged, spec, features, validation["threshold"], settings.min_lesion_mm3, meta)
    if init is not None:
        meta["parent_check"] = parent_check(model, init, prepared, split, pieces, settings, clock)
        meta["total_seconds"] = round(time.perf_counter() - start, 1)
    return model


# model.json's "synthesis" when auto was asked for and the search could not run (fixed copies instead).
_AUTO_FALLBACK = {"mode": "fixed", "why": "auto asked for, but the budget or the validation cannot carry a search "
                                          "(too few steps, or nothing held out): fixed"}


@contextmanager
def _deterministic_algorithms():
    """torch's deterministic algorithms on (warnings only where none exists) for the loop, then
    back to the caller's choice: the same seed gives the same weights."""
    import torch

    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def _meta(cases, settings: TrainSettings, init, split: Split, steps, last_loss, validation, train_seconds, averaged,
          n_real_tumors, n_synthetic, synthesis) -> dict:
    """model.json's record of the run (the spot pass and the parent check are added after)."""
    import torch

    return {
        "created": now_iso(),
        "parent": None if init is None else init.meta.get("version"),
        "training_cases": [case_id for case_id, _, _ in cases],
        "validation_cases": [cases[i][0] for i, _ in split.validation],
        "settings": settings.to_dict(),
        "seed": settings.seed,
        "steps": steps,
        "steps_planned": settings.max_steps,
        "stopped_by": "steps" if steps >= settings.max_steps else "time",
        "final_loss": last_loss,
        "validation": validation,
        "train_seconds": round(train_seconds, 1),
        "total_seconds": None,  # once the spot pass is fitted
        "n_parameters": int(sum(p.numel() for p in averaged.parameters())),
        "torch_threads": int(torch.get_num_threads()),  # the same seed gives the same weights per thread count
        "n_tumors": n_real_tumors,
        "n_synthetic_cases": n_synthetic,
        "synthesis": synthesis,
        "n_rehearsal_cases": settings.rehearsal_cases if init is not None else 0,
    }


def _reserve_s(prepared, split: Split, settings: TrainSettings, init) -> float:
    """Seconds kept from the time cap for what follows the loop: validation (and, when
    fine-tuning, the parent's too and the check set), and the spot pass's fitting."""
    reserve = 1.0 + 6e-7 * sum(prepared[i].liver.size for i, _ in split.validation)
    if settings.intensity_floor:  # a blur and a threshold over each case's liver box on the CT grid, twice
        reserve += sum(0.2 + 6e-8 * (b[1] - b[0]) * (b[3] - b[2]) * (b[5] - b[4]) for b in (p.box for p in prepared))
    if init is not None:
        reserve = 2 * reserve + 3.0 * settings.check_cases
    if init is None and settings.spot_pass:  # fitted on each case and its copies
        from .spot_fitting import SPOT_VARIANTS

        reserve += sum((1 + SPOT_VARIANTS) * (0.3 + 1.5e-7 * (b[1] - b[0]) * (b[3] - b[2]) * (b[5] - b[4]))
                       for b in (p.box for p in prepared))
    return reserve


def _user_weight(n_user_tumors: int, n_user_samplers: int, rehearsal: list) -> int:
    """How many times each of the user's cases (real and synthetic) is listed beside the rehearsal
    phantoms, whose cases are drawn uniformly: at least once, and so that each labelled tumor of
    the user's weighs about as much as one rehearsal tumor. A library of 28 tumors then fills
    about half the batches, one of 3 keeps one case's plain share: what the user labelled is
    what the new model must learn, rehearsal only stops it forgetting."""
    n_rehearsal_tumors = sum(s.n_tumors for s in rehearsal)
    if not rehearsal or n_rehearsal_tumors == 0 or n_user_samplers == 0:
        return 1
    return max(1, int(round(n_user_tumors * len(rehearsal) / (n_rehearsal_tumors * n_user_samplers))))


def _sampler_factory(features: FeatureSettings):
    """sampler(prepared case, allowed centres or None) -> its CaseSampler."""
    hard = features.channel_names.index("hessian_dark") if "hessian_dark" in features.channel_names else None
    flip_plan = polarity_plan(features.channel_names)

    def sampler(p: Prepared, allowed=None) -> CaseSampler:
        return CaseSampler(p.features, p.tumor, p.liver, _hu_per_unit(p, features), allowed, hard, flip_plan)

    return sampler


def _spot_detector(cases, init: TrainedModel | None, settings: TrainSettings, clock) -> dict | None:
    """model.json's "spot_detector": the parent's when fine-tuning, else fitted here on the
    training cases and synthetic copies of each with 5-20 mm tumors (None when they hold too
    few candidates to learn from)."""
    if not settings.spot_pass:
        return None
    if init is not None:
        return init.meta.get("spot_detector")
    from .spot_fitting import fit_spot_detector, spot_fitting_cases

    clock.report("spot pass", 0, 1)
    detector = fit_spot_detector(spot_fitting_cases(cases, settings.seed), check=clock.check)
    clock.report("spot pass", 1, 1)
    return None if detector is None else detector.to_dict()


def _intensity_floor(cases, settings: TrainSettings, clock) -> dict | None:
    """model.json's "intensity_floor": the smoothed-HU floor fitted on all the training cases
    (core/floor.py; threshold_hu None when it was not kept), or None when switched off."""
    if not settings.intensity_floor:
        return None
    from ..core.floor import fit_intensity_floor

    clock.report("intensity floor", 0, 1)
    clock.check()
    floor = fit_intensity_floor([(image, labels.array > 0, labels.array == 2) for _, image, labels in cases])
    clock.report("intensity floor", 1, 1)
    return floor


def _prepare_all(cases, features: FeatureSettings, clock, stage: str) -> list:
    """[(case_id, image, labels)] prepared for training, reported as `stage`."""
    out = []
    for k, (_, image, labels) in enumerate(cases):
        clock.check()
        out.append(prepare_case(image, labels.array > 0, features, labels=labels.array))
        clock.report(stage, k + 1, len(cases))
    return out


def _rehearsal_prepared(settings: TrainSettings, features: FeatureSettings, clock) -> list:
    """The rehearsal phantoms (rehearsal.py), prepared for training; never validation."""
    from .rehearsal import rehearsal_cases

    return _prepare_all(rehearsal_cases(settings.rehearsal_cases), features, clock, "rehearsal")


def _synthetic_prepared(cases, prepared, split: Split, copies: int, make_copy, features: FeatureSettings, clock) -> list:
    """[(prepared copy, allowed or None)]: `copies` synthetic variants of each training case,
    make_copy(image, labels, case index, copy number) -> (image, labels). A case whose validation
    slab is held out is copied with the tumor labels of the slab's CT slices hidden (so none of
    them is pasted elsewhere), and its copies withhold those slices too."""
    out = []
    for i in split.train:
        _, image, labels = cases[i]
        band = None if i not in split.allowed else _withheld_slices(prepared[i], split.allowed[i])
        if band is not None:
            array = labels.array.copy()
            hidden = array[band[0] : band[1]]
            hidden[hidden == 2] = 1
            labels = labels.with_array(array)
        for copy in range(copies):
            clock.check()
            image2, labels2 = make_copy(image, labels, i, copy)
            p = prepare_case(image2, labels2.array > 0, features, labels=labels2.array)
            out.append((p, None if band is None else _allowed_outside(p, band)))
            clock.report("synthesize", len(out), len(split.train) * copies)
    return out


def _withheld_slices(prepared: Prepared, allowed: np.ndarray) -> tuple[int, int]:
    """The CT slices (lo, hi) that the working-grid slab withheld from training covers, one more
    on each side."""
    withheld = np.flatnonzero(~allowed.any(axis=(1, 2)))
    z0, z1 = prepared.box[:2]
    per_slice = (z1 - z0) / prepared.shape[0]
    lo = z0 + int(np.floor(withheld[0] * per_slice)) - 1
    hi = z0 + int(np.ceil((withheld[-1] + 1) * per_slice)) + 1
    return max(lo, 0), min(hi, prepared.input_shape[0])


def _allowed_outside(prepared: Prepared, band: tuple[int, int]) -> np.ndarray:
    """Working-grid mask, False on every slice that touches the CT slices `band`."""
    z0, z1 = prepared.box[:2]
    per_slice = (z1 - z0) / prepared.shape[0]
    starts = z0 + np.arange(prepared.shape[0]) * per_slice
    touching = (starts < band[1]) & (starts + per_slice > band[0])
    allowed = np.ones(prepared.shape, dtype=bool)
    allowed[touching] = False
    return allowed


def _fixed_copy(settings: TrainSettings):
    """The fixed recipe (synthesis.synthetic_copy) with the settings' tumors, seeded per case and copy."""
    from ..data.synthesis import synthetic_copy

    def make(image, labels, i: int, copy: int):
        return synthetic_copy(image, labels, seed=7919 * settings.seed + 101 * i + copy, n_synthesize=settings.synthetic_tumors,
                              radius_mm=settings.synthetic_radius_mm, delta_hu=settings.synthetic_delta_hu,
                              edge_sigma_mm=settings.synthetic_edge_mm)

    return make


def _family_copy(settings: TrainSettings, candidate, index: int):
    """A synthesis search candidate's family (synthesis_family.family_copy), with its own seeds."""
    from ..data.synthesis_family import family_copy

    def make(image, labels, i: int, copy: int):
        image2, labels2, _ = family_copy(image, labels, candidate.family,
                                         seed=7919 * settings.seed + 101 * i + copy + 1_000_003 * (index + 1))
        return image2, labels2

    return make


def _initial_network(settings: TrainSettings, features: FeatureSettings, init: TrainedModel | None):
    """A fresh network seeded from settings.seed (global torch RNG untouched), or a copy of init's."""
    import copy

    import torch

    from ..core.network import build_network, default_spec

    if init is not None:
        if init.spec.get("in_channels") != features.n_channels:
            raise InputError("the initial model does not match its own feature settings; retrain it from scratch")
        network = build_network(init.spec)
        network.load_state_dict(copy.deepcopy(init.network.state_dict()))
        return network, dict(init.spec)
    spec = default_spec(settings.arch, features.n_channels, settings.widths)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        network = build_network(spec)
    return network, spec


def _check_cases(cases) -> None:
    if not cases:
        raise InputError("no training cases; add at least one case with a liver and tumor labels")
    for case_id, image, labels in cases:
        if labels.shape != image.shape:
            raise InputError(f"case {case_id}: labels {labels.shape} are not on the CT grid {image.shape}")
        if not np.any(labels.array > 0):
            raise InputError(f"case {case_id} has no liver label (1 or 2); label the liver before training")
    if not any(np.any(labels.array == 2) for _, _, labels in cases):
        raise InputError("none of the cases has a tumor label (2); label at least one tumor before training")


def _hu_per_unit(prepared: Prepared, features: FeatureSettings) -> list:
    """HU per unit of each channel, for intensity jitter (None: Hessian channel)."""
    lo, hi = features.hu_window
    per = {"ct_liver": prepared.spread_hu, "ct_window": hi - lo}
    return [per.get(name) for name in prepared.channel_names]
