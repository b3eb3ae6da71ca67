"""What the front ends may offer, and the progress texts they show: the rules the Slicer panel
and the web page share, so the two cannot drift apart.

Pure functions over plain values (no Qt, no MRML): a front end reads its state into a
`PanelState`, asks why each action is blocked, and words the reasons itself (the panel through
Slicer's translation, the page as it names its own controls). An action is enabled exactly when
its list of reasons is empty; the reasons come in the order the tooltip lists them.
"""

from __future__ import annotations

from dataclasses import dataclass

# Why an action is not available (the front end turns each into words).
SEGMENTING = "segmenting"  # a Segment job is running
TRAINING = "training"  # a Retrain job is running
NO_CT = "no CT"
NO_LIVER = "no liver"  # the liver source is "Liver segment" and neither a segment nor an ROI is chosen
NO_LIVER_SEGMENT = "no liver segment"  # an ROI is not enough: a training case needs the liver's outline
NO_MODEL = "no model"
NO_RESULT = "no result"  # nothing segmented yet to correct
NO_TUMOR = "no tumor"  # nothing segmented (and corrected) yet to add as a case
NO_PROBABILITY = "no probability"  # no kept probability map to re-threshold
NO_CASE = "no case"
NO_CASE_SELECTED = "no case selected"

# Where Segment's liver comes from (the panel's liver source; the values are the words it shows).
LIVER_AUTOMATIC = "Automatic"  # the bundled liver network (Logic.findLiver)
LIVER_SEGMENT = "Liver segment"  # the liver segment (or ROI) the user chooses
LIVER_TOTALSEGMENTATOR = "TotalSegmentator"  # the TotalSegmentator extension's liver, when it is installed
LIVER_SOURCES = (LIVER_AUTOMATIC, LIVER_SEGMENT, LIVER_TOTALSEGMENTATOR)

# Share of the progress bar per stage (percent), so one bar covers the whole run: `train`, and
# `segment` (reading the CT comes before its first report, writing the result after "done").
TRAINING_STAGE_SPAN = {"prepare": (0, 3), "synthesize": (3, 5), "rehearsal": (5, 6), "train": (6, 94), "validate": (94, 96),
                       "spot pass": (96, 97), "intensity floor": (97, 98), "parent check": (98, 100), "done": (100, 100)}
SEGMENT_STAGE_SPAN = {"prepare": (0, 15), "network": (15, 80), "postprocess": (80, 100), "done": (100, 100)}
# A Segment that first finds the liver (no liver segment or ROI given): the liver network takes
# most of the time (about 15 s of 20 on two cores).
SEGMENT_FINDING_LIVER_STAGE_SPAN = {"liver": (0, 70), "prepare": (70, 75), "network": (75, 94), "postprocess": (94, 100),
                                    "done": (100, 100)}


@dataclass(frozen=True)
class PanelState:
    """What the rules look at, read off a front end's inputs and jobs."""

    hasCt: bool = False
    liverSource: str = LIVER_AUTOMATIC  # a front end without the choice finds the liver when none is given
    hasLiverSegment: bool = False
    hasLiverRoi: bool = False
    hasModel: bool = False
    hasTumor: bool = False  # the output holds the Logic's tumor segment
    hasProbability: bool = False  # the output has its kept probability map
    caseCount: int = 0
    caseSelected: bool = False
    segmenting: bool = False
    training: bool = False


def segmentBlockers(state: PanelState) -> list[str]:
    reasons = [SEGMENTING] if state.segmenting else []
    if not state.hasCt:
        reasons.append(NO_CT)
    # No liver segment or ROI is no blocker (Segment then finds the liver) unless the user chose
    # to give the liver.
    if state.liverSource == LIVER_SEGMENT and not (state.hasLiverSegment or state.hasLiverRoi):
        reasons.append(NO_LIVER)
    if not state.hasModel:
        reasons.append(NO_MODEL)
    return reasons


def liverSources(totalSegmentatorInstalled: bool) -> list[str]:
    """The liver sources a front end offers, Automatic first (the default)."""
    return [s for s in LIVER_SOURCES if totalSegmentatorInstalled or s != LIVER_TOTALSEGMENTATOR]


def correctBlockers(state: PanelState) -> list[str]:
    """Correcting (the segment editor on the result) needs a result and no Segment replacing it."""
    if state.segmenting:
        return [SEGMENTING]
    return [] if state.hasTumor else [NO_RESULT]


def addCaseBlockers(state: PanelState) -> list[str]:
    reasons = [SEGMENTING] if state.segmenting else []
    if not state.hasCt:
        reasons.append(NO_CT)
    if not state.hasLiverSegment:
        reasons.append(NO_LIVER_SEGMENT)
    if not state.hasTumor:
        reasons.append(NO_TUMOR)
    return reasons


def removeCaseBlockers(state: PanelState) -> list[str]:
    return [] if state.caseSelected else [NO_CASE_SELECTED]


def openCaseBlockers(state: PanelState) -> list[str]:
    """Opening a library case (the web page) replaces the inputs, which a running Segment reads."""
    reasons = [SEGMENTING] if state.segmenting else []
    if not state.caseSelected:
        reasons.append(NO_CASE_SELECTED)
    return reasons


def retrainBlockers(state: PanelState) -> list[str]:
    reasons = [TRAINING] if state.training else []
    if state.segmenting:
        reasons.append(SEGMENTING)
    if state.caseCount == 0:
        reasons.append(NO_CASE)
    return reasons


def libraryBlockers(state: PanelState) -> list[str]:
    """The library folder may change only while no job reads or writes it."""
    return [reason for flag, reason in ((state.segmenting, SEGMENTING), (state.training, TRAINING)) if flag]


def thresholdBlockers(state: PanelState) -> list[str]:
    """The threshold slider re-thresholds the kept probability map."""
    if state.segmenting:
        return [SEGMENTING]
    return [] if state.hasProbability else [NO_PROBABILITY]


# ---- progress texts ------------------------------------------------------------------------
def describeProgress(info: dict, spans: dict | None = None) -> tuple[int, str]:
    """(percent 0..100 over the whole run, one-line text) for a `--progress-json` dict of
    `livertumorseg train` (the default `spans`) or `segment` (SEGMENT_STAGE_SPAN; a job's `stageSpans`)."""
    stage = str(info.get("stage", ""))
    low, high = (TRAINING_STAGE_SPAN if spans is None else spans).get(stage, (0, 100))
    step, total = info.get("step"), info.get("total")
    fraction = min(max(float(step) / float(total), 0.0), 1.0) if step is not None and total else 0.0
    percent = int(round(low + (high - low) * fraction))
    if stage == "done":
        dice = (info.get("validation") or {}).get("dice")
        return 100, "Done" + (f": validation Dice {dice:.3f}" if dice is not None else "")
    parts = [stageText(info)]
    if info.get("elapsed_s") is not None:
        parts.append(f"{formatMinutes(info['elapsed_s'])} elapsed")
    if info.get("eta_s") is not None:
        parts.append(f"about {formatMinutes(info['eta_s'])} left")
    if info.get("loss") is not None:
        parts.append(f"loss {float(info['loss']):.3f}")
    return percent, ", ".join(parts)


def stageText(info: dict) -> str:
    """'Network step 12/40': the stage of a progress dict and its step (the text of a progress bar)."""
    stage = str(info.get("stage", "")).capitalize() or "Working"
    step, total = info.get("step"), info.get("total")
    return stage + (f" step {int(step)}/{int(total)}" if step is not None and total else "")


def formatMinutes(seconds: float) -> str:
    """m:ss for a duration in seconds (progress texts)."""
    seconds = max(0, int(round(float(seconds))))
    return f"{seconds // 60}:{seconds % 60:02d}"


@dataclass(frozen=True)
class SegmentWords:
    """The texts of a Segment's two phases without a stage: reading the CT and loading the model
    (before the first report) and writing the result files (after "done"). `{t}` is the time since
    the start (m:ss). The web page shows these; the Slicer panel passes its translations."""

    reading: str = "Segmenting in the background: {t} elapsed"
    writingBar: str = "Writing the result..."
    writing: str = "Writing the result: {t} elapsed"


def segmentProgress(latest: dict | None, elapsed: float, spans: dict = SEGMENT_STAGE_SPAN,
                    words: SegmentWords = SegmentWords()) -> tuple[int | None, str, str]:
    """(percent, bar text, status text) of a running Segment from its latest progress dict (None
    before the first: reading the CT and loading the model come first; percent is then None and
    the bar keeps what it shows) and the seconds since it started. After "done" the command line
    is still writing its result files, which the texts say."""
    since = formatMinutes(elapsed)
    if latest is None:
        return None, "", words.reading.format(t=since)
    info = dict(latest, elapsed_s=elapsed)
    percent, text = describeProgress(info, spans)
    if info.get("stage") == "done":
        return percent, words.writingBar, words.writing.format(t=since)
    return percent, stageText(info), text
