"""Real training on small phantoms, then segmentation of an unseen case; reproducibility,
saving and loading, fine-tuning, cancelling, broken model files."""

import json

import numpy as np
import pytest
import torch

from LiverTumorSegLib.errors import Cancelled, InputError, ModelError
from LiverTumorSegLib.core.inference import mask_from_probability, segment
from LiverTumorSegLib.storage.modelstore import TrainedModel, default_model_path, load_model, save_model
from LiverTumorSegLib.data.phantom import PhantomSettings, make_phantom
from LiverTumorSegLib.core.features import FeatureSettings
from LiverTumorSegLib.training.train import TrainSettings, train_model

# Small phantoms (about 150 x 150 x 40 voxels of 2.2-2.8 mm), hypodense tumors only: the test
# checks that the machinery learns, not the method's limits (benchmarks do that).
PHANTOM = PhantomSettings.small(tumor_kind_weights=(1.0, 0.0, 0.0, 0.0), n_tumors=(2, 4), tumor_diameter_mm=(12.0, 45.0))
FEATURES = FeatureSettings(spacing_mm=2.5, hessian_scales_mm=(3.0, 6.0, 12.0))
TRAIN_SEEDS, TEST_SEED = (11, 12, 13), 21


def quick_settings(**overrides) -> TrainSettings:
    """A step budget (not a time budget) so the result is the same on any machine load."""
    base = dict(seed=0, minutes=10.0, max_steps=120, patch_size=32, batch_size=4, features=FEATURES, lr=3e-3)
    return TrainSettings(**{**base, **overrides})


def as_case(seed: int):
    case = make_phantom(seed, PHANTOM)
    return (f"phantom-{seed}", case.image, case.labels)


@pytest.fixture(scope="module")
def cases():
    return [as_case(s) for s in TRAIN_SEEDS]


@pytest.fixture(scope="module")
def trained(cases):
    reports = []
    model = train_model(cases, quick_settings(), progress=reports.append)
    return model, reports


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(pred & truth) / max(1, np.count_nonzero(pred) + np.count_nonzero(truth))


def test_trained_model_segments_an_unseen_case(trained):
    """Dice > 0.7 on a case it never saw (the paper's level; measured 0.87-0.94 on held-out seeds
    21-24 with these settings). Chance level is the tumor fraction of the liver (~0.05) and an
    untrained network scores ~0, so 0.7 can only be reached by learning."""
    model, reports = trained
    case = make_phantom(TEST_SEED, PHANTOM)
    liver = case.labels.array > 0
    result = segment(case.image, liver, model)
    truth = case.labels.array == 2
    score = dice(result.tumor.array > 0, truth)
    assert score > 0.7, (score, model.meta["validation"])
    assert result.probability.array.dtype == np.float32 and result.probability.same_grid(case.image)
    assert not (result.tumor.array[~liver]).any()
    assert result.lesions and result.lesions[0].volume_ml >= result.lesions[-1].volume_ml
    assert set(result.timings) >= {"hessian_s", "network_s", "total_s"}
    # The Slicer threshold slider path reproduces the mask from the probability alone.
    again = mask_from_probability(result.probability.array, liver, result.threshold, case.image.spacing_zyx,
                                  model.min_lesion_mm3)
    np.testing.assert_array_equal(again, result.tumor.array > 0)


def test_training_reports_progress_and_records_what_it_did(trained):
    model, reports = trained
    stages = [r["stage"] for r in reports]
    assert stages[0] == "prepare" and "train" in stages and stages[-2:] == ["intensity floor", "intensity floor"]
    assert stages.index("train") < stages.index("validate") < stages.index("spot pass") < stages.index("intensity floor")
    from LiverTumorSegLib.slicer.rules import TRAINING_STAGE_SPAN, describeProgress

    assert set(stages) <= set(TRAINING_STAGE_SPAN)  # the panel's one progress bar knows every stage...
    percents = [describeProgress(r)[0] for r in reports]
    assert percents == sorted(percents)  # ...and never runs backwards
    floor = model.meta["intensity_floor"]  # fitted on the three cases; kept or not, it says how it did there
    assert floor["fit"]["lesions"] >= floor["fit"]["lesions_on_tumor"] > 0
    assert (floor["threshold_hu"] is None) == ("why" in floor)
    spots = model.meta["spot_detector"]  # fitted on these cases and synthetic copies of them
    assert 0.0 < spots["cut"] < 1.0 and spots["settings"]["min_diameter_mm"] == 10.0
    assert spots["fit_summary"]["groups"] == 3 and spots["fit_summary"]["tumor_candidates"] >= 3
    train = [r for r in reports if r["stage"] == "train"]
    assert train[-1]["step"] == 120 and all(set(r) >= {"step", "total", "elapsed_s", "eta_s", "loss"} for r in train)
    assert train[-1]["loss"] < train[0]["loss"]
    assert model.meta["steps"] == 120 and model.meta["seed"] == 0
    validation = model.meta["validation"]
    assert validation["mode"] == "cases" and 0.0 < validation["dice"] <= 1.0
    assert 0.0 < model.threshold < 1.0 and validation["threshold"] == model.threshold


def test_same_settings_give_the_same_weights(cases):
    a = train_model(cases[:2], quick_settings(max_steps=3, seed=4, validation="in-sample"))
    b = train_model(cases[:2], quick_settings(max_steps=3, seed=4, validation="in-sample"))
    c = train_model(cases[:2], quick_settings(max_steps=3, seed=5, validation="in-sample"))
    sa, sb, sc = a.network.state_dict(), b.network.state_dict(), c.network.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_synthetic_copies_join_training_but_not_validation(cases):
    reports = []
    model = train_model(cases, quick_settings(max_steps=2, synthetic_copies=1), progress=reports.append)
    assert model.meta["n_synthetic_cases"] == 2  # one per training case; the held-out case gets none
    assert len(model.meta["validation_cases"]) == 1
    assert [r["step"] for r in reports if r["stage"] == "synthesize"] == [1, 2]
    with pytest.raises(InputError, match="synthetic_copies"):
        quick_settings(synthetic_copies=-1)


def test_one_case_trains_outside_its_validation_slab_and_gets_copies():
    """A single annotated case: only a slab's labels are withheld, so training still has the
    case's other tumors, and synthetic copies of it (with the slab's tumors hidden)."""
    from LiverTumorSegLib.core.features import prepare_case
    from LiverTumorSegLib.training.train import _allowed_outside, _withheld_slices
    from LiverTumorSegLib.training.validation import split_validation

    case = as_case(TRAIN_SEEDS[0])
    settings = quick_settings(max_steps=2, synthetic_copies=1)
    model = train_model([case], settings)
    assert model.meta["validation"]["mode"] == "region"
    assert model.meta["n_synthetic_cases"] == 1 and model.meta["n_tumors"] >= 1
    prepared = prepare_case(case[1], case[2].array > 0, settings.feature_settings(), labels=case[2].array)
    split = split_validation([prepared], settings, np.random.default_rng(settings.seed))
    allowed = split.allowed[0]
    (_, (z0, z1)), = split.validation
    assert not allowed[z0:z1].any() and allowed[:z0].all() and allowed[z1:].all()  # no margin beyond the slab
    lo, hi = _withheld_slices(prepared, allowed)
    assert 0 <= lo < hi <= case[1].shape[0]
    again = _allowed_outside(prepared, (lo, hi))
    assert not (again & ~allowed).any()  # the copies withhold at least the slab


def test_a_threshold_is_only_chosen_on_held_out_cases():
    from LiverTumorSegLib.training.validation import Split, validate

    truth = np.zeros((20, 20, 20), bool)
    truth[5:15, 5:15, 5:15] = True
    liver = np.ones_like(truth)
    prob = np.where(truth, 0.3, 0.02).astype(np.float32)  # found only below 0.5
    pieces = [(prob, liver, truth, (2.0, 2.0, 2.0))]
    held_out = validate(pieces, Split([1], {}, [(0, None)], "cases"), quick_settings())
    assert held_out["threshold"] < 0.5 and held_out["threshold_source"] == "validation"
    for too_little in (Split([0], {}, [(0, (0, 20))], "region"), Split([0], {}, [(0, None)], "in-sample")):
        kept = validate(pieces, too_little, quick_settings())
        assert kept["threshold"] == 0.5 and kept["threshold_source"] == "default"
        assert kept["dice_by_threshold"]["0.30"] > kept["dice_by_threshold"]["0.50"]  # still reported


def test_the_users_cases_weigh_by_how_many_tumors_they_hold():
    from collections import namedtuple

    from LiverTumorSegLib.training.train import _user_weight

    Rehearsal = namedtuple("Rehearsal", "n_tumors")
    rehearsal = [Rehearsal(4)] * 5 + [Rehearsal(0)]  # 20 tumors in six phantoms
    assert _user_weight(3, 2, rehearsal) == 1  # a case with 3 tumors and its copy: one entry each
    assert _user_weight(28, 2, rehearsal) == 4  # 28 tumors: 8 of 14 entries, about half of the batches
    assert _user_weight(28, 2, []) == 1  # training from scratch: no rehearsal to balance


def test_save_load_round_trip_gives_the_same_segmentation(trained, tmp_path):
    model, _ = trained
    folder = save_model(model, tmp_path / "v001")
    meta = json.loads((folder / "model.json").read_text())
    assert meta["format_version"] == 1 and meta["training_cases"] == [f"phantom-{s}" for s in TRAIN_SEEDS]
    assert set(meta) >= {"created", "parent", "settings", "seed", "validation", "train_seconds"}
    loaded = load_model(folder)
    assert loaded.threshold == model.threshold and loaded.feature_settings == model.feature_settings
    assert load_model(folder / "model.pt").spec == model.spec
    case = make_phantom(TEST_SEED, PHANTOM)
    a = segment(case.image, case.labels.array > 0, model).probability.array
    b = segment(case.image, case.labels.array > 0, loaded).probability.array
    np.testing.assert_array_equal(a, b)
    with pytest.raises(InputError, match="already exists"):
        save_model(model, folder)


def test_fine_tuning_starts_from_the_model_and_replays_all_cases(trained, cases, tmp_path):
    model, _ = trained
    parent = load_model(save_model(model, tmp_path / "v001"))
    parent.meta["relative_floor"] = {"below_liver_hu": 30.0}  # as the shipped default model carries one
    new_case = as_case(14)
    tuned = train_model(cases + [new_case], quick_settings(max_steps=4, seed=1), init=parent)
    assert tuned.meta["parent"] == "v001"
    assert tuned.meta["training_cases"] == [c[0] for c in cases] + ["phantom-14"]
    assert tuned.spec == model.spec and tuned.feature_settings == model.feature_settings
    assert tuned.meta["spot_detector"] == parent.meta["spot_detector"] is not None  # kept, not refitted on the few new cases
    assert tuned.meta["intensity_floor"]["fit"]["lesions"] > 0  # refitted on the user's cases
    assert tuned.meta["relative_floor"] == parent.meta["relative_floor"]  # set per CT, not fitted: passed on
    assert 0 < tuned.meta["user_share"] < 1
    # Four small steps from the parent stay near it; a fresh network is far away.
    p, t = model.network.state_dict(), tuned.network.state_dict()
    moved = sum(float((t[k] - p[k]).abs().sum()) for k in p if p[k].dtype.is_floating_point)
    fresh = train_model(cases[:1], quick_settings(max_steps=1, validation="in-sample")).network.state_dict()
    distance = sum(float((fresh[k] - p[k]).abs().sum()) for k in p if p[k].dtype.is_floating_point)
    assert 0 < moved < 0.2 * distance


def test_a_child_that_forgot_is_marked_worse_than_its_parent(trained, cases):
    """A parent that segments, and a child fine-tuned with a learning rate that wrecks it: the
    parent check (rehearsal.check_cases) says the child is worse, and by how much."""
    model, _ = trained
    wrecked = train_model(cases, quick_settings(max_steps=3, lr=50.0, fine_tune_lr_factor=1.0, rehearsal_cases=1,
                                                check_cases=2), init=model)
    check = wrecked.meta["parent_check"]
    parent_dice, child_dice = check["check_set"]["parent"]["dice_mean"], check["check_set"]["child"]["dice_mean"]
    assert parent_dice > 0.1 and child_dice < parent_dice - 0.05, check
    assert check["worse_than_parent"] and "check set" in check["worse_on"]
    assert wrecked.meta["n_rehearsal_cases"] == 1 and len(check["check_cases"]) == 2


def test_cancel_raises_and_bad_cases_are_input_errors(cases):
    calls = []

    def stop_after_a_few():
        calls.append(1)
        return len(calls) > 4

    with pytest.raises(Cancelled):
        train_model(cases[:1], quick_settings(max_steps=50), should_stop=stop_after_a_few)
    image, labels = cases[0][1], cases[0][2]
    no_tumor = labels.with_array(np.where(labels.array == 2, 1, labels.array).astype(np.uint8))
    with pytest.raises(InputError, match="tumor"):
        train_model([("x", image, no_tumor)], quick_settings(max_steps=1))
    with pytest.raises(InputError, match="liver"):
        train_model([("x", image, labels.with_array(np.zeros(labels.shape, np.uint8)))], quick_settings())
    with pytest.raises(InputError):
        train_model([], quick_settings())


def test_broken_or_foreign_model_files_are_model_errors(trained, tmp_path):
    with pytest.raises(ModelError, match="no model"):
        load_model(tmp_path / "missing")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "model.pt").write_bytes(b"this is not a torch file")
    with pytest.raises(ModelError, match="damaged"):
        load_model(corrupt)
    future = tmp_path / "future"
    future.mkdir()
    torch.save({"format_version": 99, "spec": {}}, future / "model.pt")
    with pytest.raises(ModelError, match="format 99"):
        load_model(future)
    model, _ = trained
    folder = save_model(model, tmp_path / "ok")
    payload = torch.load(folder / "model.pt", weights_only=True)
    payload["spec"]["widths"] = [4, 8]
    mismatched = tmp_path / "mismatched"
    mismatched.mkdir()
    torch.save(payload, mismatched / "model.pt")
    with pytest.raises(ModelError, match="retrain"):
        load_model(mismatched)


def test_model_folders_with_retired_options_load_at_their_only_value(tmp_path):
    """A model written when liver_reference, hessian_outside, fine_hessian_mm and the training
    options loss, threshold_objective, lesion_weight_gamma and fine_tune_freeze_bn still existed
    (removed on purpose: measured, kept off) loads when they hold the value that is now the only
    behaviour, and segments as before; a feature option at another value cannot be reproduced
    and is refused, naming it."""
    shipped = default_model_path()
    payload = torch.load(shipped / "model.pt", weights_only=True)
    meta = json.loads((shipped / "model.json").read_text())
    meta["settings"].update(loss="batch_dice", threshold_objective="dice", lesion_weight_gamma=0.0, fine_tune_freeze_bn=False)
    retired = {"liver_reference": "median", "hessian_outside": "image", "fine_hessian_mm": None, "fine_hessian_scales_mm": [1.5, 2.5]}
    for name, features in (("old", retired), ("mode", {**retired, "liver_reference": "mode"})):
        folder = tmp_path / name
        folder.mkdir()
        torch.save({**payload, "feature_settings": {**payload["feature_settings"], **features}}, folder / "model.pt")
        (folder / "model.json").write_text(json.dumps(meta))
    old, default = load_model(tmp_path / "old"), load_model(shipped)
    assert old.feature_settings == default.feature_settings and old.threshold == default.threshold
    assert old.meta["settings"]["loss"] == "batch_dice"  # model.json is read as it is
    case = make_phantom(5, PhantomSettings.small())
    np.testing.assert_array_equal(segment(case.image, case.labels.array > 0, old).probability.array,
                                  segment(case.image, case.labels.array > 0, default).probability.array)
    with pytest.raises(ModelError, match="liver_reference='mode'.*retrain the model with this version"):
        load_model(tmp_path / "mode")


def test_default_model_path_points_into_resources():
    path = default_model_path()
    assert path.name == "default" and path.parent.name == "Models" and path.parent.parent.name == "Resources"
    assert isinstance(TrainedModel.__dataclass_fields__["threshold"].default, float)
