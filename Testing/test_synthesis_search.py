"""`--synthesis auto`: the segmenter's validation on held-out real pieces chooses the synthetic data
(synthesis_search.py), guarded against one held-out tumor deciding, recorded in model.json."""

from __future__ import annotations

import json

import numpy as np
import pytest

from LiverTumorSegLib.errors import InputError
from LiverTumorSegLib.storage.modelstore import save_model
from LiverTumorSegLib.data.phantom import PhantomSettings, make_phantom
from LiverTumorSegLib.training.synthesis_search import (MARGIN, REFERENCE, choose, default_candidates, describe,
                                               plan_steps, resolve_mode)
from LiverTumorSegLib.training.train import TrainSettings, train_model


def small_cases(n=3, first_seed=100):
    out = []
    for s in range(n):
        case = make_phantom(first_seed + s, PhantomSettings.small(n_tumors=(2, 3)))
        out.append((f"c{s}", case.image, case.labels))
    return out


@pytest.fixture(scope="module")
def auto_model(tmp_path_factory):
    """A real model trained with the search (100 steps, small patches), saved as a model folder."""
    model = train_model(small_cases(), TrainSettings(seed=0, max_steps=100, patch_size=16, batch_size=2, synthesis="auto"))
    return model, save_model(model, tmp_path_factory.mktemp("models") / "v001")


def test_model_json_records_the_search(auto_model):
    model, folder = auto_model
    syn = json.loads((folder / "model.json").read_text())["synthesis"]
    assert syn["requested"] == "auto" and syn["mode"] == "auto"
    names = [c["name"] for c in syn["candidates"]]
    assert names == [c.name for c in default_candidates()] and syn["chosen"] in names
    assert syn["chosen_settings"]["name"] == syn["chosen"]
    plan = syn["plan"]
    assert plan["trunk_steps"] + len(names) * plan["fork_steps"] + plan["final_steps"] == 100
    assert model.meta["steps"] == plan["trunk_steps"] + plan["fork_steps"] + plan["final_steps"]  # the winner's own steps
    assert syn["held_out_tumors"] >= 2
    assert model.meta["n_synthetic_cases"] == 2 * syn["chosen_settings"]["copies"]  # the winner's, 2 real training cases
    for row in syn["candidates"]:
        assert row["score"] is not None and 0.0 <= row["score"] <= 1.0 and 0.0 <= row["dice"] <= 1.0
        assert len(row["leave_one_out_scores"]) == syn["held_out_tumors"]
        assert row["pool_cases"] >= 2 + row["copies"] * 2  # 2 real training cases, copies of each
    family = next(r for r in syn["candidates"] if r["name"] == "family_small_hyper")["family"]
    assert family["size_skew"] == "small" and family["hyper_fraction"] == 0.5
    assert len(syn["leave_one_out_best"]) == syn["held_out_tumors"] and isinstance(syn["stable_under_leave_one_out"], bool)
    assert "segmenter" in describe(syn) and syn["chosen"] in describe(syn)


def test_auto_never_picks_what_scored_below_off(auto_model):
    model, _ = auto_model
    syn = model.meta["synthesis"]
    scores = {c["name"]: c["score"] for c in syn["candidates"]}
    assert scores[syn["chosen"]] >= scores["off"]
    rng = np.random.default_rng(0)  # and for any table of scores
    for _ in range(300):
        names = ["off", REFERENCE, "a", "b"]
        n_units = int(rng.integers(0, 4))
        scores = {n: float(rng.uniform()) for n in names}
        loo = {n: [float(rng.uniform()) for _ in range(n_units)] for n in names}
        assert scores[choose(scores, loo)["chosen"]] >= scores["off"]


def test_one_held_out_tumor_cannot_decide():
    # "a" is best overall only because of held-out tumor 0 (leave it out and it loses): not chosen.
    scores = {"off": 0.50, REFERENCE: 0.55, "a": 0.62, "b": 0.58}
    loo = {"off": [0.50, 0.50, 0.50], REFERENCE: [0.60, 0.55, 0.50], "a": [0.58, 0.66, 0.62], "b": [0.62, 0.58, 0.56]}
    decision = choose(scores, loo)
    assert decision["unguarded_best"] == "a" and decision["chosen"] == "b"  # b wins with every tumor left out
    assert decision["robust_gain_vs_reference"]["a"] < 0 < MARGIN < decision["robust_gain_vs_reference"]["b"]
    assert decision["leave_one_out_best"] == ["b", "a", "a"] and decision["stable_under_leave_one_out"] is False
    loo["b"][2] = 0.50  # now b loses with tumor 2 left out: the reference stays
    assert choose(scores, loo)["chosen"] == REFERENCE
    # With fewer than 2 held-out tumors nothing replaces the reference, unless it is below off.
    assert choose(scores, {n: [] for n in scores})["chosen"] == REFERENCE
    assert choose({**scores, "off": 0.56}, {n: [] for n in scores})["chosen"] == "off"


def test_modes_resolve_and_bad_values_name_the_fix():
    # Fixed on either side of the 30 tumors below which auto was once meant to be the default:
    # auto measured no better.
    assert resolve_mode("default", 1, 29)[0] == "fixed"
    assert resolve_mode("default", 1, 30)[0] == "fixed"
    assert resolve_mode("default", 0, 5)[0] == "off" and resolve_mode("fixed", 0, 5)[0] == "off"
    assert resolve_mode("off", 1, 5)[0] == "off" and resolve_mode("auto", 0, 50)[0] == "auto"
    assert plan_steps(50, 4, 0.3) is None
    assert plan_steps(400, 3, 0.16) == {"budget_steps": 400, "trunk_steps": 240, "fork_steps": 32, "final_steps": 64,
                                        "search_share": 0.16, "requested_search_share": 0.16}
    with pytest.raises(InputError, match="synthesis 'sometimes'"):
        TrainSettings(synthesis="sometimes")
    with pytest.raises(InputError, match="synthesis_search_share"):
        TrainSettings(synthesis_search_share=0.3)
    TrainSettings(synthesis_search_share=0.25)
    # Every plan the settings allow fits the budget, for 2 to 4 candidates.
    for n in (2, 3, 4):
        for budget in (100, 101, 300, 400, 999, 2500, 5000):
            for share in (0.05, 0.16, 0.25):
                plan = plan_steps(budget, n, share)
                assert plan is not None and plan["final_steps"] >= 0 and plan["fork_steps"] >= 5
                assert plan["trunk_steps"] + n * plan["fork_steps"] + plan["final_steps"] == budget
                assert plan["search_share"] == round((n - 1) * plan["fork_steps"] / budget, 4)
    assert plan_steps(400, 2, 0.25)["fork_steps"] == 80  # capped: 100 would not fit after the 240-step trunk


def test_auto_without_room_for_a_search_falls_back_to_fixed_and_says_why():
    model = train_model(small_cases(), TrainSettings(seed=0, max_steps=8, patch_size=16, batch_size=2, synthesis="auto"))
    syn = model.meta["synthesis"]
    assert syn["mode"] == "fixed" and "cannot carry a search" in syn["why"] and model.meta["n_synthetic_cases"] == 2
    off = train_model(small_cases(), TrainSettings(seed=0, max_steps=4, patch_size=16, batch_size=2, synthesis="off"))
    assert off.meta["synthesis"]["mode"] == "off" and off.meta["n_synthetic_cases"] == 0


def test_auto_out_of_time_in_the_trunk_keeps_the_trunk_and_says_so():
    """The time cap (not the plan) ends the run before any fork: the model is the trunk's, and
    model.json says why, rather than calling it fixed."""
    model = train_model(small_cases(), TrainSettings(seed=0, max_steps=100, minutes=0.005, patch_size=16, batch_size=2,
                                                     synthesis="auto"))
    syn = model.meta["synthesis"]
    assert syn["mode"] == "auto" and syn["chosen"] is None and "time cap" in syn["why"]
    assert model.meta["steps"] == syn["steps_by_stage"]["trunk"] < syn["plan"]["trunk_steps"]
    assert model.meta["stopped_by"] == "time" and model.meta["n_synthetic_cases"] == syn["trunk_cases"] - 2
    assert describe(syn).startswith("synthetic data: auto (the time cap ran out")
