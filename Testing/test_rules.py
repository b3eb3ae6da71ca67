"""The action rules and progress texts the Slicer panel and the web page share (slicer/rules.py):
which action is blocked by what, in the order the tooltips list it, and the progress bar's
percent and text from real `--progress-json` dicts."""

from __future__ import annotations

import pytest

from LiverTumorSegLib.slicer import rules
from LiverTumorSegLib.slicer.rules import SEGMENT_STAGE_SPAN, PanelState, describeProgress, stageText

READY = PanelState(hasCt=True, hasLiverSegment=True, hasModel=True, hasTumor=True, hasProbability=True, caseCount=2,
                   caseSelected=True)
ACTIONS = (rules.segmentBlockers, rules.correctBlockers, rules.addCaseBlockers, rules.removeCaseBlockers,
           rules.openCaseBlockers, rules.retrainBlockers, rules.libraryBlockers, rules.thresholdBlockers)


@pytest.mark.parametrize("blockers", ACTIONS)
def test_everything_is_allowed_once_the_inputs_are_there_and_no_job_runs(blockers):
    assert blockers(READY) == []


def test_an_empty_panel_says_everything_that_is_missing_in_order():
    empty = PanelState()
    assert rules.segmentBlockers(empty) == [rules.NO_CT, rules.NO_MODEL]  # no liver: Segment finds it
    assert rules.correctBlockers(empty) == [rules.NO_RESULT]
    assert rules.addCaseBlockers(empty) == [rules.NO_CT, rules.NO_LIVER_SEGMENT, rules.NO_TUMOR]
    assert rules.removeCaseBlockers(empty) == [rules.NO_CASE_SELECTED]
    assert rules.openCaseBlockers(empty) == [rules.NO_CASE_SELECTED]
    assert rules.retrainBlockers(empty) == [rules.NO_CASE]
    assert rules.libraryBlockers(empty) == []  # the library folder needs nothing, only no job
    assert rules.thresholdBlockers(empty) == [rules.NO_PROBABILITY]


def test_a_running_segment_blocks_what_would_race_it_and_comes_first():
    running = PanelState(**{**READY.__dict__, "segmenting": True})
    for blockers in (rules.segmentBlockers, rules.correctBlockers, rules.addCaseBlockers, rules.libraryBlockers,
                     rules.thresholdBlockers):
        assert blockers(running) == [rules.SEGMENTING], blockers.__name__
    assert rules.retrainBlockers(running) == [rules.SEGMENTING]
    assert rules.removeCaseBlockers(running) == []  # the case list is not what Segment reads
    assert rules.openCaseBlockers(running) == [rules.SEGMENTING]  # opening a case replaces Segment's inputs
    assert rules.openCaseBlockers(PanelState(segmenting=True)) == [rules.SEGMENTING, rules.NO_CASE_SELECTED]
    # While it runs, a missing input is still named after the job (the tooltip's order).
    assert rules.segmentBlockers(PanelState(segmenting=True)) == [rules.SEGMENTING, rules.NO_CT, rules.NO_MODEL]
    assert rules.correctBlockers(PanelState(segmenting=True)) == [rules.SEGMENTING]


def test_a_running_retrain_blocks_retrain_and_the_library_folder_only():
    training = PanelState(**{**READY.__dict__, "training": True})
    assert rules.retrainBlockers(training) == [rules.TRAINING]
    assert rules.libraryBlockers(training) == [rules.TRAINING]
    assert rules.libraryBlockers(PanelState(segmenting=True, training=True)) == [rules.SEGMENTING, rules.TRAINING]
    assert rules.retrainBlockers(PanelState(segmenting=True, training=True)) == [rules.TRAINING, rules.SEGMENTING,
                                                                                  rules.NO_CASE]
    for blockers in (rules.segmentBlockers, rules.correctBlockers, rules.addCaseBlockers, rules.thresholdBlockers,
                     rules.openCaseBlockers, rules.removeCaseBlockers):
        assert blockers(training) == [], blockers.__name__


def test_an_roi_is_enough_to_segment_but_not_to_add_a_case():
    roi = PanelState(hasCt=True, hasLiverRoi=True, hasModel=True, hasTumor=True)
    assert rules.segmentBlockers(roi) == []
    assert rules.addCaseBlockers(roi) == [rules.NO_LIVER_SEGMENT]


def test_liver_sources_automatic_first_totalsegmentator_only_when_installed():
    assert rules.liverSources(False) == [rules.LIVER_AUTOMATIC, rules.LIVER_SEGMENT]
    assert rules.liverSources(True) == [rules.LIVER_AUTOMATIC, rules.LIVER_SEGMENT, rules.LIVER_TOTALSEGMENTATOR]
    # The panel's combo box holds every choice and drops the ones not offered from its end.
    for installed in (False, True):
        offered = rules.liverSources(installed)
        assert list(rules.LIVER_SOURCES[:len(offered)]) == offered


def test_choosing_to_give_the_liver_needs_a_liver_segment_or_roi_to_segment():
    chosen = PanelState(hasCt=True, hasModel=True, liverSource=rules.LIVER_SEGMENT)
    assert rules.segmentBlockers(chosen) == [rules.NO_LIVER]
    assert rules.segmentBlockers(PanelState(**{**chosen.__dict__, "hasLiverRoi": True})) == []
    assert rules.segmentBlockers(PanelState(**{**chosen.__dict__, "hasLiverSegment": True})) == []
    for source in (rules.LIVER_AUTOMATIC, rules.LIVER_TOTALSEGMENTATOR):  # these bring their own liver
        assert rules.segmentBlockers(PanelState(**{**chosen.__dict__, "liverSource": source})) == []


def test_a_result_without_its_probability_map_can_be_corrected_but_not_rethresholded():
    edited_elsewhere = PanelState(**{**READY.__dict__, "hasProbability": False})
    assert rules.correctBlockers(edited_elsewhere) == []
    assert rules.thresholdBlockers(edited_elsewhere) == [rules.NO_PROBABILITY]


def test_segment_progress_before_the_first_report_during_the_network_and_while_writing():
    assert rules.segmentProgress(None, 4.4) == (None, "", "Segmenting in the background: 0:04 elapsed")
    percent, bar, text = rules.segmentProgress({"stage": "network", "step": 3, "total": 12}, 65.0)
    assert bar == "Network step 3/12" and text == "Network step 3/12, 1:05 elapsed"
    assert percent == describeProgress({"stage": "network", "step": 3, "total": 12}, SEGMENT_STAGE_SPAN)[0] == 31
    assert rules.segmentProgress({"stage": "done", "step": 1, "total": 1}, 125.0) == (
        100, "Writing the result...", "Writing the result: 2:05 elapsed")


def test_segment_progress_in_a_front_ends_own_words():
    """The Slicer panel passes its translations: the same phases and times, its texts."""
    words = rules.SegmentWords(reading="Lecture {t}", writingBar="Ecriture...", writing="Ecriture {t}")
    assert rules.segmentProgress(None, 4.4, words=words) == (None, "", "Lecture 0:04")
    assert rules.segmentProgress({"stage": "done"}, 125.0, words=words) == (100, "Ecriture...", "Ecriture 2:05")
    network = {"stage": "network", "step": 3, "total": 12}
    assert rules.segmentProgress(network, 65.0, words=words) == rules.segmentProgress(network, 65.0)


def test_format_minutes():
    assert [rules.formatMinutes(s) for s in (0, 59.4, 59.6, 61, 3600, -3)] == ["0:00", "0:59", "1:00", "1:01", "60:00",
                                                                                "0:00"]


def test_describe_progress():
    assert describeProgress({"stage": "prepare", "step": 1, "total": 2})[0] == 2
    percent, text = describeProgress({"stage": "train", "step": 50, "total": 100, "elapsed_s": 75, "eta_s": 61, "loss": 0.5})
    assert percent == 50 and "step 50/100" in text and "1:15 elapsed" in text and "about 1:01 left" in text
    assert describeProgress({"stage": "done", "validation": {"dice": 0.71}}) == (100, "Done: validation Dice 0.710")
    # A fine-tuning run's stages, in the order train_model reports them, never move the bar back.
    stages = ["prepare", "synthesize", "rehearsal", "train", "validate", "parent check"]
    ends = [describeProgress({"stage": s, "step": 1, "total": 1})[0] for s in stages]
    starts = [describeProgress({"stage": s, "step": 0, "total": 1})[0] for s in stages]
    assert all(a <= b for a, b in zip(ends, starts[1:])) and ends[-1] == 100
    # Segment's stages share one bar: prepare, then the network's tiles, then postprocessing.
    assert describeProgress({"stage": "prepare", "step": 0, "total": 1}, SEGMENT_STAGE_SPAN)[0] == 0
    percent, text = describeProgress({"stage": "network", "step": 2, "total": 4, "elapsed_s": 3.2}, SEGMENT_STAGE_SPAN)
    assert 0 < percent < describeProgress({"stage": "postprocess", "step": 0, "total": 1}, SEGMENT_STAGE_SPAN)[0] < 100
    assert text == "Network step 2/4, 0:03 elapsed"
    assert describeProgress({"stage": "done", "step": 1, "total": 1}, SEGMENT_STAGE_SPAN) == (100, "Done")
    assert stageText({"stage": "postprocess", "step": 0, "total": 1}) == "Postprocess step 0/1"
    assert stageText({"stage": "prepare"}) == "Prepare" and stageText({}) == "Working"
