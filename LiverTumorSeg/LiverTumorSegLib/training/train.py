"""Train MHP-Net (or the U-Net baseline) from a handful of labelled cases in minutes on a CPU.

prepare every case (liver box, working grid, Hessian channels) -> hold out validation data ->
Adam on Dice + BCE over balanced, augmented patches inside the liver, until the time budget or
max_steps -> the exponential moving average of the weights is the model (it does not depend on
where a time budget happened to stop the run) -> choose the decision threshold on the held-out
data by Dice and store it in the model (a net trained on tumor-rich patches is not calibrated
at 0.5 for a whole liver; 0.5 is kept when the held-out tumors were hardly found at all).

Validation: by case when there are >= 3 cases and >= 2 of them hold tumors; otherwise one
z-slab of the liver around one tumor is left out of training (training patches never reach
into it); with a single tumor nothing can be held out and the threshold is chosen on the
training cases (meta validation mode "in-sample", an optimistic Dice).
Deterministic: the same cases, settings and seed give the same weights (same machine and thread
count; a time budget that ends the run before max_steps ends it at a machine-dependent step).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import numpy as np

from ..errors import Cancelled, InputError
from ..storage.modelstore import TrainedModel
from .patches import CaseSampler, PatchSettings, draw_batch, lesion_weights, polarity_plan
from ..core.features import FeatureSettings, Prepared, prepare_case

THRESHOLDS = tuple(float(t) for t in np.round(np.arange(0.05, 0.951, 0.05), 2))
# Below this best validation Dice the held-out tumors were hardly found, and the curve says more
# about noise than about calibration: the threshold stays at 0.5.
MIN_EVIDENCE_DICE = 0.2
LOSSES = ("batch_dice", "patch_dice")
THRESHOLD_OBJECTIVES = ("dice", "lesion")
# A fine-tuned child whose Dice falls more than this below its parent's is marked worse.
PARENT_TOLERANCE = 0.02


@dataclass
class TrainSettings:
    """seed; budget: minutes of wall time and max_steps (whichever ends first); patch and batch;
    Adam learning rate (x fine_tune_lr_factor when starting from a model); architecture
    ("mhpnet" | "unet3d") and widths (None = the architecture's); use_hessian None = the
    architecture's default (MHP-Net yes, U-Net no); validation "auto" | "cases" | "region" |
    "in-sample"; synthetic_copies: extra training variants per training case
    (synthesis.synthetic_copy: own tumors pasted elsewhere plus synthesised ones; never used
    for validation; one copy raised per-case Dice at 7 tumors from 0.62 to 0.67 in
    benchmarks/RESULTS.md); synthetic_tumors, synthetic_radius_mm, synthetic_delta_hu,
    synthetic_edge_mm: how many Hu-recipe tumors each copy gets, their radius range (log-uniform,
    mm), intensity change (HU; the texture halves it on average) and edge blur (Gaussian sigma,
    mm; 1-2 mm leaves a 6 mm tumor about a third of its contrast).
    loss: "batch_dice" = soft Dice over the whole batch + BCE (a big tumor outweighs a small one
    by its voxel count); "patch_dice" = soft Dice per patch, averaged, + BCE (each tumor-centred
    patch counts once, whatever the tumor's size).
    threshold_objective: "dice" = the validation threshold with the best pooled voxel Dice;
    "lesion" = the best mean of voxel Dice and lesion F1, smoothed over neighbouring thresholds
    (meant to stop trading small lesions for voxels; measured, it picked 0.65-0.85 on 1-3 pieces
    and lost Dice, so "dice" stays the default; benchmarks/RESULTS.md).
    loss "patch_dice" and the synthetic_* settings above were measured too: mixed, not defaults.
    Budget: max_steps is the plan (600: about 3.5 min on one core, so Retrain's 5 minutes cap it
    only on a slow or busy machine); minutes only caps it (meta says which ended the run).
    Fine-tuning (an initial model given): rehearsal_cases phantoms of the default model's recipe
    are replayed with the user's cases (rehearsal.py), and parent and child are both scored on
    check_cases held-out phantoms and on the user's validation pieces (meta "parent_check");
    a child more than PARENT_TOLERANCE below its parent on either is marked worse.
    fine_tune_freeze_bn: when fine-tuning, keep the parent's batch-norm statistics (the few new
    cases then shift only the weights, not the normalisation every layer relies on).
    synthesis: "off" | "fixed" | "auto" | "default" (synthesis_search.py): fixed = the
    synthetic_copies above; auto = the segmenter chooses the synthetic data mix (off, fixed, or
    synthesis_family's small-and-hyperdense member at 2 copies) by validation on held-out real pieces, spending
    synthesis_search_share of max_steps on the search; default = fixed (what `train` and Retrain
    use; auto measured no better, benchmarks/RESULTS.md "Synthesis steered by the segmenter"). The engine's own default stays "fixed" so direct
    callers (benchmarks, the default model's build) keep their measured behaviour.
    lesion_weight_gamma: weight of each tumor voxel in the loss by its tumor's size
    (patches.lesion_weights; 0 = every voxel alike, 1 = every tumor under 20 mm weighs as much as
    a 20 mm one).
    spot_pass: fit the spot pass (spots.py: 10-25 mm spots the network misses) on the training
    cases and synthetic copies of them, stored in meta "spot_detector"; fine-tuning keeps the
    parent's instead (fitted on the default recipe's data, it is not relearnt from a few cases)."""

    seed: int = 0
    minutes: float = 5.0
    max_steps: int = 600
    patch_size: int = 32
    batch_size: int = 4
    lr: float = 2e-3
    fine_tune_lr_factor: float = 0.5
    warmup_steps: int = 20
    ema_decay: float = 0.99
    arch: str = "mhpnet"
    widths: tuple | None = None
    use_hessian: bool | None = None
    features: FeatureSettings = field(default_factory=FeatureSettings)
    patches: PatchSettings | None = None
    validation: str = "auto"
    val_fraction: float = 0.25
    min_lesion_mm3: float = 30.0
    synthetic_copies: int = 1
    synthetic_tumors: tuple = (1, 2)
    synthetic_radius_mm: tuple = (3.0, 20.0)
    synthetic_delta_hu: tuple = (65.0, 145.0)
    synthetic_edge_mm: tuple = (1.0, 2.0)
    loss: str = "batch_dice"
    threshold_objective: str = "dice"
    rehearsal_cases: int = 6
    check_cases: int = 3
    fine_tune_freeze_bn: bool = False
    lesion_weight_gamma: float = 0.0
    synthesis: str = "fixed"
    synthesis_search_share: float = 0.16
    spot_pass: bool = True

    def __post_init__(self):
        from .synthesis_search import MODES

        if self.synthesis not in MODES:
            raise InputError(f"synthesis {self.synthesis!r}: use one of {MODES}")
        if not 0.05 <= self.synthesis_search_share <= 0.25:  # the trunk takes 60 %; plan_steps caps the forks to fit
            raise InputError(f"synthesis_search_share {self.synthesis_search_share} must be between 0.05 and 0.25 of the steps")
        if self.minutes <= 0 or self.max_steps < 1:
            raise InputError("the training budget needs minutes > 0 and max_steps >= 1")
        if self.patch_size % 8 or self.patch_size < 16:
            raise InputError(f"patch_size {self.patch_size} must be a multiple of 8, at least 16")
        if not 0.0 <= self.lesion_weight_gamma <= 2.0:
            raise InputError(f"lesion_weight_gamma {self.lesion_weight_gamma} must be between 0 and 2 (0 = off)")
        if self.rehearsal_cases < 0 or self.check_cases < 0:
            raise InputError("rehearsal_cases and check_cases must be 0 or more")
        if self.synthetic_copies < 0:
            raise InputError(f"synthetic_copies {self.synthetic_copies} must be 0 or more")
        if self.loss not in LOSSES:
            raise InputError(f"loss {self.loss!r}: use one of {LOSSES}")
        if self.threshold_objective not in THRESHOLD_OBJECTIVES:
            raise InputError(f"threshold_objective {self.threshold_objective!r}: use one of {THRESHOLD_OBJECTIVES}")
        self.synthetic_tumors = tuple(int(v) for v in self.synthetic_tumors)
        self.synthetic_radius_mm = tuple(float(v) for v in self.synthetic_radius_mm)
        self.synthetic_delta_hu = tuple(float(v) for v in self.synthetic_delta_hu)
        self.synthetic_edge_mm = tuple(float(v) for v in self.synthetic_edge_mm)
        if self.validation not in ("auto", "cases", "region", "in-sample"):
            raise InputError(f"validation {self.validation!r}: use auto, cases, region or in-sample")
        if self.patches is None:
            self.patches = PatchSettings(size=self.patch_size)
        self.patches.size = self.patch_size

    def feature_settings(self) -> FeatureSettings:
        use = self.use_hessian if self.use_hessian is not None else self.arch == "mhpnet"
        return FeatureSettings.from_dict({**self.features.to_dict(), "use_hessian": bool(use)})

    def to_dict(self) -> dict:
        d = asdict(self)
        d["features"] = self.features.to_dict()
        return d


@dataclass
class _Split:
    """Which prepared cases train, and the validation pieces: (case index, z-slab or None)."""

    train: list
    allowed: dict
    validation: list
    mode: str


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
    import torch

    settings = settings or TrainSettings()
    start = time.perf_counter()
    clock = _Clock(start, progress, should_stop)
    _check_cases(cases)
    features = init.feature_settings if init is not None else settings.feature_settings()
    prepared = []
    for i, (case_id, image, labels) in enumerate(cases):
        clock.check()
        prepared.append(prepare_case(image, labels.array > 0, features, labels=labels.array))
        clock.report("prepare", i + 1, len(cases))

    rng = np.random.default_rng(settings.seed)
    split = _split_validation(prepared, settings, rng)
    hard = features.channel_names.index("hessian_dark") if "hessian_dark" in features.channel_names else None
    flip_plan = polarity_plan(features.channel_names)
    gamma, spacing = settings.lesion_weight_gamma, features.spacing_mm
    samplers = [
        CaseSampler(p.features, p.tumor, p.liver, _hu_per_unit(p, features), split.allowed.get(i), hard, flip_plan,
                    lesion_weights(p.tumor, spacing, gamma))
        for i, p in enumerate(prepared)
        if i in split.train
    ]
    n_real_tumors = int(sum(s.n_tumors for s in samplers))

    def sampler(p):
        return CaseSampler(p.features, p.tumor, p.liver, _hu_per_unit(p, features), None, hard, flip_plan,
                           lesion_weights(p.tumor, spacing, gamma))

    from .synthesis_search import resolve_mode

    mode, why = resolve_mode(settings.synthesis, settings.synthetic_copies, sum(_count_components(p.tumor) for p in prepared))
    synthesis = {"requested": settings.synthesis, "mode": mode, "why": why}
    copies = max(settings.synthetic_copies, 1) if mode == "auto" else settings.synthetic_copies if mode == "fixed" else 0
    extra = list(_synthetic_cases(cases, split, replace(settings, synthetic_copies=copies), features, clock))
    n_synthetic = len(extra)
    if init is not None:
        extra += _rehearsal_prepared(settings, features, clock)
    extra_samplers = [sampler(p) for p in extra]
    # real cases and rehearsal: what every synthesis candidate of the search trains on
    base_samplers = samplers + extra_samplers[n_synthetic:]
    samplers += extra_samplers
    network, spec = _initial_network(settings, features, init)
    lr = settings.lr * (settings.fine_tune_lr_factor if init is not None else 1.0)
    val_reserve_s = 1.0 + 6e-7 * sum(prepared[i].liver.size for i, _ in split.validation)
    if init is not None:  # the parent is scored too: its validation pieces and the check set
        val_reserve_s = 2 * val_reserve_s + 3.0 * settings.check_cases
    if init is None and settings.spot_pass:  # the spot pass is fitted after the training: each case and its copies
        from .spot_fitting import SPOT_VARIANTS

        val_reserve_s += sum((1 + SPOT_VARIANTS) * (0.3 + 1.5e-7 * (b[1] - b[0]) * (b[3] - b[2]) * (b[5] - b[4]))
                             for b in (p.box for p in prepared))
    deadline = start + settings.minutes * 60.0 - val_reserve_s
    previous_det = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        freeze_bn = settings.fine_tune_freeze_bn and init is not None
        searched = None
        if mode == "auto":
            from .synthesis_search import search_and_fit

            fixed = extra_samplers[:n_synthetic]

            def candidate_samplers(candidate, index):
                if candidate.family is None:
                    return fixed
                return [sampler(p) for p in _family_cases(cases, split, candidate, index, settings, features, clock)]

            searched = search_and_fit(network, base_samplers, candidate_samplers, settings, split, prepared, lr, rng,
                                      deadline, clock, freeze_bn)
            if searched is None:
                synthesis.update(mode="fixed", why="auto asked for, but the budget or the validation cannot carry a search "
                                                   "(too few steps, or nothing held out): fixed")
        if searched is not None:
            averaged, steps, last_loss, found = searched
            synthesis.update(found)  # n_synthetic_cases: the winner's own (the trunk saw every candidate's)
            pool = found["trunk_cases"] if found["chosen"] is None else next(
                r["pool_cases"] for r in found["candidates"] if r["name"] == found["chosen"])
            n_synthetic = pool - len(base_samplers)
        else:
            averaged, steps, last_loss = _fit(network, samplers, settings, lr, rng, deadline, clock, freeze_bn)
    finally:
        torch.use_deterministic_algorithms(previous_det)
    train_seconds = time.perf_counter() - start

    pieces = _validation_pieces(averaged, prepared, split, clock)
    validation = _validate(pieces, split, settings)
    meta = {
        "created": _now(),
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
        "total_seconds": None,  # below, once the spot pass is fitted
        "n_parameters": int(sum(p.numel() for p in averaged.parameters())),
        "torch_threads": int(torch.get_num_threads()),  # the same seed gives the same weights per thread count
        "n_tumors": n_real_tumors,
        "n_synthetic_cases": n_synthetic,
        "synthesis": synthesis,
        "n_rehearsal_cases": settings.rehearsal_cases if init is not None else 0,
    }
    meta["spot_detector"] = _spot_detector(cases, init, settings, clock)
    meta["total_seconds"] = round(time.perf_counter() - start, 1)
    averaged.eval()
    model = TrainedModel(averaged, spec, features, validation["threshold"], settings.min_lesion_mm3, meta)
    if init is not None:
        meta["parent_check"] = parent_check(model, init, prepared, split, pieces, settings, clock)
        meta["total_seconds"] = round(time.perf_counter() - start, 1)
    return model


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


def _rehearsal_prepared(settings: TrainSettings, features: FeatureSettings, clock) -> list:
    """The rehearsal phantoms (rehearsal.py), prepared for training; never validation."""
    from .rehearsal import rehearsal_cases

    out = []
    cases = rehearsal_cases(settings.rehearsal_cases)
    for k, (_, image, labels) in enumerate(cases):
        clock.check()
        out.append(prepare_case(image, labels.array > 0, features, labels=labels.array))
        clock.report("rehearsal", k + 1, len(cases))
    return out


def parent_check(child: TrainedModel, parent: TrainedModel, prepared, split: _Split, child_pieces: list,
                 settings: TrainSettings, clock) -> dict:
    """Score a fine-tuned child next to its parent, each at its own threshold, on the check set
    (held-out phantoms of the default recipe: what the parent knew) and on the user's validation
    pieces (what the user asked for; `child_pieces` are the child's, already computed by
    validation). worse_than_parent: more than PARENT_TOLERANCE lower on either."""
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
        parent_pieces = _validation_pieces(parent.network, prepared, split, clock, stage="parent check")
        for who, model, pieces in (("parent", parent, parent_pieces), ("child", child, child_pieces)):
            user[who] = _lesion_scores(pieces, model.threshold, settings.min_lesion_mm3)
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


class _Clock:
    """Progress reports and the cancel check, with elapsed time since the start (s)."""

    def __init__(self, start, progress, should_stop):
        self.start, self.progress, self.should_stop = start, progress, should_stop

    def check(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise Cancelled("training cancelled; no model was written")

    def report(self, stage: str, step: int, total: int, eta_s: float | None = None, loss: float | None = None) -> None:
        if self.progress is not None:
            elapsed = time.perf_counter() - self.start
            self.progress({"stage": stage, "step": step, "total": total, "elapsed_s": round(elapsed, 2),
                           "eta_s": None if eta_s is None else round(eta_s, 1), "loss": loss})


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


def _split_validation(prepared: list, settings: TrainSettings, rng: np.random.Generator) -> _Split:
    """Hold out cases, or a z-slab around one tumor, or nothing (see the module docstring)."""
    n = len(prepared)
    with_tumor = [i for i, p in enumerate(prepared) if p.tumor.any()]
    n_components = [_count_components(prepared[i].tumor) for i in range(n)]
    mode = settings.validation
    if mode == "auto":
        mode = "cases" if n >= 3 and len(with_tumor) >= 2 else ("region" if sum(n_components) >= 2 else "in-sample")
    if mode == "cases" and len(with_tumor) >= 2 and n >= 2:
        k = min(len(with_tumor) - 1, max(1, int(round(settings.val_fraction * n))))
        held = sorted(int(i) for i in rng.permutation(with_tumor)[:k])
        return _Split([i for i in range(n) if i not in held], {}, [(i, None) for i in held], "cases")
    if mode in ("cases", "region") and sum(n_components) >= 2:
        return _region_split(prepared, n_components, settings, rng)
    return _Split(list(range(n)), {}, [(i, None) for i in range(n)], "in-sample")


def _synthetic_cases(cases, split: _Split, settings: TrainSettings, features: FeatureSettings, clock) -> list:
    """Prepared synthetic variants of the training cases (not of a case whose validation region
    is held out: a pasted copy could carry that region's tumors into training)."""
    from ..data.synthesis import synthetic_copy

    sources = [i for i in split.train if i not in split.allowed]
    total = len(sources) * settings.synthetic_copies
    out = []
    for i in sources:
        _, image, labels = cases[i]
        for copy in range(settings.synthetic_copies):
            clock.check()
            image2, labels2 = synthetic_copy(image, labels, seed=7919 * settings.seed + 101 * i + copy,
                                             n_synthesize=settings.synthetic_tumors, radius_mm=settings.synthetic_radius_mm,
                                             delta_hu=settings.synthetic_delta_hu, edge_sigma_mm=settings.synthetic_edge_mm)
            out.append(prepare_case(image2, labels2.array > 0, features, labels=labels2.array))
            clock.report("synthesize", len(out), total)
    return out


def _family_cases(cases, split: _Split, candidate, index: int, settings: TrainSettings, features: FeatureSettings, clock) -> list:
    """Prepared synthetic variants of the training cases made by a search candidate's family
    (synthesis_family.family_copy), same sources as _synthetic_cases, own seeds."""
    from ..data.synthesis_family import family_copy

    sources = [i for i in split.train if i not in split.allowed]
    out = []
    for i in sources:
        _, image, labels = cases[i]
        for copy in range(candidate.copies):
            clock.check()
            image2, labels2, _ = family_copy(image, labels, candidate.family,
                                             seed=7919 * settings.seed + 101 * i + copy + 1_000_003 * (index + 1))
            out.append(prepare_case(image2, labels2.array > 0, features, labels=labels2.array))
            clock.report("synthesize", len(out), len(sources) * candidate.copies)
    return out


def _count_components(mask: np.ndarray) -> int:
    from scipy import ndimage

    return int(ndimage.label(mask, structure=np.ones((3, 3, 3), bool))[1])


def _region_split(prepared, n_components, settings, rng) -> _Split:
    """Leave out a z-slab (val_fraction of the liver's height, at least one patch) centred on one
    tumor of the case with the most tumors; training centres keep half a patch away from it."""
    from scipy import ndimage

    i = int(np.argmax(n_components))
    p = prepared[i]
    components, count = ndimage.label(p.tumor, structure=np.ones((3, 3, 3), bool))
    centres = ndimage.center_of_mass(p.tumor, components, range(1, count + 1))
    zc = int(round(centres[int(rng.integers(count))][0]))
    liver_z = np.flatnonzero(p.liver.any(axis=(1, 2)))
    height = max(settings.patch_size, int(round(settings.val_fraction * (liver_z[-1] - liver_z[0] + 1))))
    z0 = max(0, zc - height // 2)
    z1 = min(p.shape[0], z0 + height)
    half = settings.patch_size // 2
    allowed = np.ones(p.shape, dtype=bool)
    allowed[max(0, z0 - half) : z1 + half] = False
    if not (p.tumor & allowed).any() and all(not q.tumor.any() for j, q in enumerate(prepared) if j != i):
        return _Split(list(range(len(prepared))), {}, [(j, None) for j in range(len(prepared))], "in-sample")
    return _Split(list(range(len(prepared))), {i: allowed}, [(i, (z0, z1))], "region")


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


def _fit(network, samplers, settings: TrainSettings, lr: float, rng, deadline: float, clock: _Clock, freeze_bn: bool = False):
    """The optimisation loop; returns (EMA network, steps done, last smoothed loss). freeze_bn:
    batch norm normalises with its stored statistics and does not update them."""
    import torch

    averaged = _EMA(network, settings.ema_decay)
    optimizer = torch.optim.Adam(network.parameters(), lr=lr)
    network.train()
    if freeze_bn:
        for module in network.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()
    step, smoothed = 0, None
    loop_start = time.perf_counter()
    while step < settings.max_steps and (step == 0 or time.perf_counter() < deadline):
        clock.check()
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / max(1, settings.warmup_steps))
        x, target, weight = (torch.from_numpy(a) for a in draw_batch(samplers, settings.batch_size, settings.patches, rng))
        logits = network(x)
        loss = dice_bce_loss(logits, target, weight, per_patch=settings.loss == "patch_dice")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        averaged.update(network, step)
        step += 1
        value = float(loss.detach())
        smoothed = value if smoothed is None else 0.9 * smoothed + 0.1 * value
        per_step = (time.perf_counter() - loop_start) / step
        total = int(min(settings.max_steps, step + max(0.0, deadline - time.perf_counter()) / per_step))
        clock.report("train", step, max(total, step), eta_s=(total - step) * per_step, loss=round(smoothed, 4))
    return averaged.network, step, None if smoothed is None else round(smoothed, 4)


class _EMA:
    """Exponential moving average of weights and batch-norm buffers (warm start: early steps
    average over fewer steps)."""

    def __init__(self, network, decay: float):
        import copy

        self.network = copy.deepcopy(network)
        self.decay = decay
        for p in self.network.parameters():
            p.requires_grad_(False)

    def update(self, network, step: int) -> None:
        import torch

        decay = min(self.decay, (1.0 + step) / (10.0 + step))
        with torch.no_grad():
            ours = self.network.state_dict()
            for name, value in network.state_dict().items():
                if value.dtype.is_floating_point:
                    ours[name].mul_(decay).add_(value, alpha=1.0 - decay)
                else:
                    ours[name].copy_(value)


def dice_bce_loss(logits, target, weight, per_patch: bool = False):
    """Soft Dice + BCE, both over the voxels with weight > 0 (the liver), weighted (tumor voxels
    may weigh more: patches.lesion_weights); a batch (or patch) without tumor still pays for false
    positives through the Dice denominator. per_patch: Dice per patch, averaged, so a patch
    around a 6 mm tumor weighs as much as one inside a 60 mm tumor."""
    import torch

    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="sum")
    bce = bce / weight.sum().clamp_min(1.0)
    prob = torch.sigmoid(logits) * weight
    t = target * weight
    dims = tuple(range(1, logits.dim())) if per_patch else tuple(range(logits.dim()))
    dice = 1.0 - (2.0 * (prob * t).sum(dims) + 1.0) / (prob.sum(dims) + t.sum(dims) + 1.0)
    return bce + dice.mean()


def _validate(pieces: list, split: _Split, settings: TrainSettings) -> dict:
    """Over the validation pieces (_validation_pieces, computed once per trained network): the
    threshold with the best pooled Dice inside the liver (histograms give every threshold at
    once), or with threshold_objective "lesion" the best
    mean of Dice and lesion F1; then Dice and lesion F1 at that threshold with the post-processing
    inference applies."""
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
    if dice_raw.max() < MIN_EVIDENCE_DICE:  # the held-out tumors were hardly found: keep 0.5
        best, source = THRESHOLDS.index(0.5), "default"
    else:  # ties go to the threshold nearest 0.5
        best, source = int(np.argmax(dice_raw - 1e-9 * np.abs(np.asarray(THRESHOLDS) - 0.5))), "validation"
    scored = {}  # threshold -> _lesion_scores, each computed once

    def scores_at(t: float) -> dict:
        if t not in scored:
            scored[t] = _lesion_scores(pieces, t, settings.min_lesion_mm3)
        return scored[t]

    objective = "dice"
    if settings.threshold_objective == "lesion" and source == "validation":
        scores = [scores_at(t) for t in THRESHOLDS]
        best, objective = _best_lesion_threshold(scores), "lesion"
    threshold = float(THRESHOLDS[best])
    at_threshold = scores_at(threshold)
    out = {
        "dice": round(at_threshold["dice"], 4),
        "lesion_f1": None if at_threshold["lesion_f1"] is None else round(at_threshold["lesion_f1"], 4),
        "threshold": threshold,
        "threshold_source": source,
        "threshold_objective": objective,
        "mode": split.mode,
        "dice_at_0.5": round(scores_at(0.5)["dice"], 4),
        "dice_by_threshold": {f"{t:.2f}": round(float(d), 4) for t, d in zip(THRESHOLDS, dice_raw)},
    }
    if objective == "lesion":
        out["lesion_f1_by_threshold"] = {f"{t:.2f}": None if s["lesion_f1"] is None else round(s["lesion_f1"], 4)
                                         for t, s in zip(THRESHOLDS, scores)}
    return out


def _validation_pieces(network, prepared, split: _Split, clock: _Clock, stage: str = "validate") -> list:
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


def _lesion_scores(pieces, threshold: float, min_lesion_mm3: float) -> dict:
    """Pooled voxel Dice and lesion F1 over the validation pieces at one threshold, with the
    post-processing inference applies (specks and liver-surface slivers removed)."""
    from ..core.inference import mask_from_probability
    from ..evaluation.metrics import lesion_detection

    inter = pred = true = found = n_true = matched = n_pred = 0
    for prob, liver, truth, spacing in pieces:
        mask = mask_from_probability(prob, liver, threshold, spacing, min_lesion_mm3)
        inter += np.count_nonzero(mask & truth)
        pred += np.count_nonzero(mask)
        true += np.count_nonzero(truth)
        det = lesion_detection(mask, truth, float(np.prod(spacing)))
        found, n_true, matched, n_pred = found + det["found"], n_true + det["n_true"], matched + det["matched"], n_pred + det["n_pred"]
    recall = found / n_true if n_true else None
    precision = matched / n_pred if n_pred else None
    f1 = None if recall is None or precision is None else 0.0 if recall + precision == 0 else 2 * recall * precision / (recall + precision)
    return {"dice": 2.0 * inter / max(pred + true, 1), "lesion_f1": f1 if n_pred or n_true else None}


def _best_lesion_threshold(scores: list) -> int:
    """Index of the threshold with the best mean of Dice and lesion F1 (no prediction: F1 0),
    smoothed over neighbouring thresholds so one lucky step with 1-3 pieces does not decide;
    ties go to the threshold nearest 0.5."""
    value = np.array([0.5 * (s["dice"] + (s["lesion_f1"] or 0.0)) for s in scores])
    smoothed = np.convolve(np.pad(value, 1, mode="edge"), [0.25, 0.5, 0.25], mode="valid")
    return int(np.argmax(smoothed - 1e-9 * np.abs(np.asarray(THRESHOLDS) - 0.5)))


def _now() -> str:
    import datetime as dt

    return dt.datetime.now().astimezone().isoformat(timespec="seconds")
