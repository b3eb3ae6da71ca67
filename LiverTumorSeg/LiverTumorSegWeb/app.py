"""The web page: the Slicer panel's workflow on trame-slicer (single user, served on loopback).

Load a CT and its liver (upload: a file, a DICOM series as files or one .zip; or a library case),
Segment (on a worker thread of the server) with a progress bar and Cancel, the tumor segment over the CT in three
slice views and 3D, the lesion table (a row click centres the views on it), the threshold slider,
trame-slicer's segment editor (paint, erase, scissors, islands, threshold, undo), Add case,
Retrain in the background, the model list (Use = activate; an older one = rollback) and the
downloads (.seg.nrrd, labelmap, lesion CSV; a DICOM SEG when the CT was a DICOM series).

Every action is a `LiverTumorSegLogic` call, the ones the Slicer widget makes; background jobs are
polled from an asyncio task where the widget uses a QTimer. Errors are one line in the page
(`InputError` as the command line words it); the server keeps running.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import threading
import time
import warnings
from pathlib import Path

from trame.app import TrameApp
from trame.ui.vuetify3 import SinglePageWithDrawerLayout
from trame.widgets import client, html
from trame.widgets import vuetify3 as v3
from trame_slicer import module as trame_slicer_module
from trame_slicer.app.logic.segmentation import SegmentEditorLogic
from trame_slicer.app.ui.segmentation import SegmentEditorUI, SegmentEditorUndoRedoUI
from trame_slicer.core import LayoutManager, SlicerApp
from trame_slicer.app.ui import create_vertical_slice_view_gutter_ui, create_vertical_view_gutter_ui
from trame_slicer.rca_view import RemoteViewFactory
from trame_slicer.views import NoScheduleRendering, SliceView, ThreeDView, ViewType

from LiverTumorSegLib.slicer import logic as liblogic
from LiverTumorSegLib.slicer import rules
from LiverTumorSegLib.errors import Cancelled, InputError

from .uploads import save_uploads

log = logging.getLogger("LiverTumorSegWeb")

JOB_POLL_S = 0.25
PRELOAD_AFTER_S = 3.0  # the engine's imports wait this long after the server listens
EDIT_CHECK_PAUSE_S = 0.4  # after the last stroke of a correction
TITLE = "LiverTumorSeg"
# The page's words for why an action is blocked (rules.py's reasons; the page loads files where
# the Slicer panel chooses nodes, and has no ROI).
REASONS = {
    rules.SEGMENTING: "segmentation is running: wait for it or Cancel it",
    rules.TRAINING: "training is running: wait for it or Cancel it",
    rules.NO_CT: "load a CT",
    rules.NO_LIVER: "load the liver mask",
    rules.NO_LIVER_SEGMENT: "load the liver mask",
    rules.NO_MODEL: "there is no model yet: add corrected cases and Retrain",
    rules.NO_RESULT: "segment first",
    rules.NO_TUMOR: "segment (and correct) the tumors first",
    rules.NO_PROBABILITY: "segment first",
    rules.NO_CASE: "add at least one case",
    rules.NO_CASE_SELECTED: "select a case",
}


def one_line(error: BaseException) -> str:
    text = " ".join(part.strip() for part in str(error).splitlines() if part.strip())
    return text or type(error).__name__


def registerViewFactories(viewManager, server) -> None:
    """trame-slicer's remote slice and 3D views (what its register_rca_factories sets up), built
    without drawing: until a factory hands a new view to the browser stream, trame-slicer renders
    it synchronously on every scene event, about 240 renders (more than a second) before the page
    can be served, and nobody sees them; the stream draws each view when the page shows it."""
    def quietlyBuilt(viewClass):
        return lambda **kwargs: viewClass(scheduled_render_strategy=NoScheduleRendering(), **kwargs)

    for viewClass, viewType, populateUi in ((SliceView, ViewType.SLICE_VIEW, create_vertical_slice_view_gutter_ui),
                                            (ThreeDView, ViewType.THREE_D_VIEW, create_vertical_view_gutter_ui)):
        viewManager.register_factory(RemoteViewFactory(server, quietlyBuilt(viewClass), viewType, populate_view_ui_f=populateUi,
                                                       target_fps=30.0, blur_fps=10.0, interactive_quality=50))


class LiverTumorSegWebApp(TrameApp):
    """One page, one scene, one Logic: the Slicer module panel for a browser."""

    def __init__(self, libraryPath=None, server=None):
        super().__init__(server)
        self.server.enable_module(trame_slicer_module)
        self.slicer = SlicerApp()
        self.logic = liblogic.LiverTumorSegLogic(libraryPath=libraryPath, scene=self.slicer.scene)
        self.scratch = Path(tempfile.mkdtemp(prefix="LiverTumorSeg-web-"))
        self.ct = None
        self.liver = None  # (segmentation node, segment id)
        self.output = None  # the result segmentation node
        self.segmentJob = None
        self.trainingJob = None
        self.addUnconfirmed = False  # Add case clicked once on an uncorrected result
        self._poller = None
        self._editChecker = None
        self._editCheckDue = 0.0

        registerViewFactories(self.slicer.view_manager, self.server)
        self.layoutManager = LayoutManager(self.slicer.scene, self.slicer.view_manager, self.server)
        quad = LayoutManager.default_grid_configuration()["Quad View"]  # three slice views and 3D, as Slicer's
        self.layoutManager.register_layout_dict({"Quad View": quad})
        self.layoutManager.set_layout("Quad View")
        self.editorLogic = SegmentEditorLogic(self.server, self.slicer)
        self.slicer.segmentation_editor.segmentation_modified.connect(self._onSegmentationModified)
        self.slicer.segmentation_editor.set_surface_representation_enabled(True)  # segments in 3D, as the Logic shows them
        self._initState()
        self.state.change("lts_case")(self._onCaseChosen)
        self._buildUi()
        self._refreshModels()
        self._refreshCases()
        self._checkCanApply()

    # ---- state -------------------------------------------------------------------------------
    def _initState(self) -> None:
        s = self.state
        s.trame__title = TITLE
        s.lts_message, s.lts_message_type = "", "info"
        s.lts_ct_name, s.lts_liver_name = "", ""
        s.lts_ct_dicom = False  # the CT came from a DICOM series: its result downloads as a DICOM SEG too
        s.lts_library = str(self.logic.libraryPath)
        s.lts_models, s.lts_active_model = [], ""
        s.lts_cases, s.lts_case = [], None
        s.lts_segmenting, s.lts_segment_percent, s.lts_segment_text = False, 0, ""
        s.lts_threshold, s.lts_replace_edits = 0.5, False
        s.lts_lesion_headers, s.lts_lesions = [], []
        s.lts_tumor_status = ""
        s.lts_notes = ""
        s.lts_training, s.lts_train_percent, s.lts_train_text = False, 0, ""
        s.lts_train_minutes, s.lts_train_steps = 5, ""
        s.lts_can_segment = s.lts_has_result = s.lts_can_add = s.lts_can_train = False
        s.lts_can_open = s.lts_can_remove = False
        s.lts_segment_tip = s.lts_add_tip = s.lts_train_tip = ""

    def _say(self, text: str, kind: str = "info") -> None:
        self.state.lts_message, self.state.lts_message_type = text, kind

    def _fail(self, what: str, error: BaseException) -> None:
        """One line in the page; a bug's traceback only in the server log."""
        if not isinstance(error, (InputError, Cancelled)):
            log.exception("LiverTumorSeg web: %s", what)
            self._say(f"{what}: {type(error).__name__}: {one_line(error)} (details in the server log)", "error")
        else:
            self._say(f"{what}: {one_line(error)}", "error")

    def _checkCanApply(self) -> None:
        """Enable each action by the rules the Slicer panel shares (rules.py); the tips say what is missing."""
        s = self.state
        state = rules.PanelState(
            hasCt=self.ct is not None, hasLiverSegment=self.liver is not None, hasModel=bool(s.lts_models),
            hasTumor=bool(self.logic.tumorSegmentId(self.output)), caseCount=len(s.lts_cases),
            caseSelected=bool(s.lts_case), segmenting=self.segmentJob is not None, training=self.trainingJob is not None)
        for name, blockers in (("segment", rules.segmentBlockers), ("add", rules.addCaseBlockers),
                               ("train", rules.retrainBlockers)):
            missing = [REASONS[reason] for reason in blockers(state)]
            s[f"lts_can_{name}"], s[f"lts_{name}_tip"] = not missing, "; ".join(missing)
        # The editor, the slider and the downloads. The slider needs no probability rule of its own
        # (the panel's thresholdBlockers): the page's only results come from its own Segment, which
        # always keeps the probability map, while the panel may hold a result loaded without one.
        s.lts_has_result = not rules.correctBlockers(state)
        s.lts_can_open, s.lts_can_remove = not rules.openCaseBlockers(state), not rules.removeCaseBlockers(state)
        s.lts_segmenting, s.lts_training = state.segmenting, state.training
        self._showTumorStatus()

    def _onCaseChosen(self, **_state) -> None:
        """The case list's selection changed (in the page or by a refresh): Open and Remove follow it."""
        self._checkCanApply()

    def _showTumorStatus(self) -> None:
        tumorId = self.logic.tumorSegmentId(self.output)
        if not tumorId or self.ct is None:
            self.state.lts_tumor_status = ""
            return
        edited = self.logic.editedTumorSegmentId(self.output, self.ct) is not None
        self.state.lts_tumor_status = "Tumor segment: corrected (edited since Segment)" if edited else \
            "Tumor segment: as computed (not corrected yet)"

    def _refreshModels(self) -> None:
        active = self.logic.activeModelVersion()
        self.state.lts_models = [
            {"version": info.version, "label": self.logic.modelLabel(info), "warning": self.logic.modelWarning(info),
             "active": info.version == active}
            for info in self.logic.listModels()
        ]
        self.state.lts_active_model = active if self.state.lts_models else ""

    def _refreshCases(self) -> None:
        items = []
        for case in self.logic.listCases():
            text = f"{case.case_id}: {case.tumor_count} tumor(s), {case.tumor_volume_ml:.1f} mL"
            if case.problem:
                text = f"{case.case_id}: \u26a0 damaged ({case.problem})"
            items.append({"title": text + (f" - {case.notes}" if case.notes else ""), "value": case.case_id})
        self.state.lts_cases = items
        if self.state.lts_case not in [item["value"] for item in items]:
            self.state.lts_case = None

    def _refreshLesions(self) -> None:
        header, rows = self.logic.lesionRows(self.logic.lesionTableNode(self.output))
        shown = [i for i, name in enumerate(header) if not name.startswith("Centroid")]
        self.state.lts_lesion_headers = [header[i] for i in shown]
        self.state.lts_lesions = [[_cell(row[i], integer=(i == 0)) for i in shown] for row in rows]

    # ---- loading -----------------------------------------------------------------------------
    def _uploadFolder(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="upload-", dir=self.scratch))

    def _read(self, what, files, read):
        """Save uploaded files, read them with `read(path)`; errors name the file as uploaded."""
        folder = self._uploadFolder()
        try:
            path = save_uploads(files, folder)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = read(path)
            return result, [str(w.message).replace(str(path), path.name) for w in caught]
        except InputError as error:
            raise InputError(str(error).replace(str(folder) + "/", "")) from None
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _setInputs(self, ct, liver) -> None:
        self.slicer.segmentation_editor.deactivate_effect()
        self.logic.removeNodes(self.output, self.liver[0] if self.liver else None,
                               self.ct if ct is not self.ct else None)
        self.ct, self.liver, self.output = ct, liver, None
        self.state.lts_ct_name = ct.GetName() if ct is not None else ""
        self.state.lts_ct_dicom = self.logic.dicomSource(ct) is not None
        self.state.lts_liver_name = liver[0].GetName() if liver else ""
        self.state.lts_lesion_headers, self.state.lts_lesions = [], []
        self.addUnconfirmed = False
        if ct is not None:
            self.slicer.display_manager.show_volume_in_slice_background(ct)
            self.slicer.display_manager.reset_views()

    async def onUploadCt(self, files) -> None:
        if self.segmentJob is not None:
            self._say("Could not load the CT: segmentation is running: wait for it or Cancel it", "error")
            return
        try:
            ct, notes = self._read("CT", files, lambda path: self.logic.loadVolume(path))
        except Exception as error:  # noqa: BLE001 - shown in the page, the server keeps running
            self._fail("Could not load the CT", error)
            return
        self._setInputs(ct, None)
        self._say(f"Loaded CT '{ct.GetName()}'. Load its liver mask, or Segment to find the liver automatically."
                  + (f" Warning: {notes[-1]}" if notes else ""),
                  "warning" if notes else "success")
        self._checkCanApply()

    async def onUploadLiver(self, files) -> None:
        if self.ct is None:
            self._say("Could not load the liver mask: load the CT first (the mask is read on its grid)", "error")
            return
        if self.segmentJob is not None:
            self._say("Could not load the liver mask: segmentation is running", "error")
            return
        try:
            liver, notes = self._read("liver mask", files, lambda path: self.logic.loadLiverSegmentation(path, self.ct))
        except Exception as error:  # noqa: BLE001
            self._fail("Could not load the liver mask", error)
            return
        self._setInputs(self.ct, liver)
        self._say("Loaded the liver mask. Ready to Segment." + (f" Warning: {notes[-1]}" if notes else ""),
                  "warning" if notes else "success")
        self._checkCanApply()

    def onOpenCase(self) -> None:
        caseId = self.state.lts_case
        if not caseId or self.segmentJob is not None:
            return
        try:
            ct, liverNode, liverId = self.logic.loadCase(caseId)
        except Exception as error:  # noqa: BLE001
            self._fail(f"Could not open case {caseId}", error)
            return
        self._setInputs(ct, (liverNode, liverId))
        self._say(f"Opened case {caseId} (CT and liver). Ready to Segment.", "success")
        self._checkCanApply()

    # ---- models ------------------------------------------------------------------------------
    def onUseModel(self, version: str) -> None:
        try:
            self.logic.setActiveModel(version)
        except Exception as error:  # noqa: BLE001
            self._fail("Could not activate the model", error)
            return
        self._refreshModels()
        self._say(f"Active model: {version}", "success")

    # ---- segment -----------------------------------------------------------------------------
    def onSegment(self) -> None:
        if self.segmentJob is not None:
            return
        try:
            liverNode, liverId = self.liver if self.liver else (None, None)
            # On a worker thread of this server, which keeps the engine loaded (no process start,
            # no imports, no files); the widget uses a process, so that Slicer survives a failure.
            self.segmentJob = self.logic.startSegment(self.ct, liverNode, liverId, outputSegmentationNode=self.output,
                                                      replaceEdited=bool(self.state.lts_replace_edits), inProcess=True)
        except Exception as error:  # noqa: BLE001
            self._fail("Could not start the segmentation", error)
            return
        self.slicer.segmentation_editor.deactivate_effect()
        self.state.lts_segment_percent, self.state.lts_segment_text = 0, "Starting..."
        self._say("Segmenting in the background...", "info")
        self._checkCanApply()
        self._startPolling()

    def onCancelSegment(self) -> None:
        if self.segmentJob is not None:
            self.segmentJob.cancel()
            self.state.lts_segment_text = "Cancelling..."

    def _pollSegment(self) -> None:
        job = self.segmentJob
        job.poll()
        if not job.finished:
            if not job.cancelled:  # keep "Cancelling..." until it has stopped
                percent, _bar, text = rules.segmentProgress(job.latest, job.elapsed, job.stageSpans)
                if percent is not None:  # None: the CT is still being prepared (no report yet)
                    self.state.lts_segment_percent = percent
                self.state.lts_segment_text = text
            return
        self.segmentJob = None
        try:
            self._segmentFinished(job)
        finally:
            self._checkCanApply()

    def _segmentFinished(self, job) -> None:
        try:
            segmentation, table = self.logic.finishSegment(job)
        except Cancelled as error:
            self._say(one_line(error), "info")
            return
        except Exception as error:  # noqa: BLE001
            self._fail("Segmentation failed", error)
            return
        self.output = segmentation
        self.addUnconfirmed = False
        found = self.logic.foundLiverSegmentId(segmentation) if self.liver is None else None
        if found:  # the liver found becomes the liver input: corrected, it is what Segment and Add case use
            self.liver = (segmentation, found)
            self.state.lts_liver_name = "found automatically (the Liver segment: correct it like the tumors)"
        self.state.lts_threshold = float(segmentation.GetAttribute(liblogic.THRESHOLD_ATTRIBUTE))
        self._refreshLesions()
        editor = self.slicer.segmentation_editor
        editor.set_active_segmentation(segmentation, self.ct)
        editor.set_active_segment_id(self.logic.tumorSegmentId(segmentation))
        for view in self.slicer.view_manager.get_threed_views():
            view.reset_view()  # the tumor surfaces (and the liver's) fill the 3D view
        text = f"{table.GetNumberOfRows()} lesion(s) found in {rules.formatMinutes(job.elapsed)}."
        if job.warnings:
            text += f" Warning: {job.warnings[-1]}"
        self._say(text, "warning" if job.warnings else "success")

    def onThreshold(self, value) -> None:
        if self.output is None or self.logic.probabilityNode(self.output) is None or self.segmentJob is not None:
            return
        current = self.output.GetAttribute(liblogic.THRESHOLD_ATTRIBUTE)
        if current is not None and abs(float(current) - float(value)) < 1e-6:
            return
        try:
            self.logic.rethreshold(self.output, float(value), replaceEdited=bool(self.state.lts_replace_edits))
        except Exception as error:  # noqa: BLE001
            self._fail("Re-thresholding failed", error)
            if current is not None:
                self.state.lts_threshold = float(current)
            return
        self._refreshLesions()
        self._say(f"Threshold {float(value):.2f}: {len(self.state.lts_lesions)} lesion(s).", "success")
        self._checkCanApply()

    def onLesionClicked(self, row: int) -> None:
        try:
            r, a, s = self.logic.jumpToLesion(self.logic.lesionTableNode(self.output), int(row))
        except Exception as error:  # noqa: BLE001
            self._fail("Could not show the lesion", error)
            return
        self._say(f"Views centred on lesion {int(row) + 1} (R {r:.1f}, A {a:.1f}, S {s:.1f} mm)", "info")

    # ---- correct, add case -------------------------------------------------------------------
    def _onSegmentationModified(self, *_args) -> None:
        """A correction (paint, erase, undo...): say whether the tumor segment is now edited, once
        the strokes pause (the check reads the whole segment)."""
        self._editCheckDue = time.monotonic() + EDIT_CHECK_PAUSE_S
        if self._editChecker is None or self._editChecker.done():
            self._editChecker = asyncio.ensure_future(self._checkEditsLater())

    async def _checkEditsLater(self) -> None:
        while time.monotonic() < self._editCheckDue:
            await asyncio.sleep(max(0.05, self._editCheckDue - time.monotonic()))
        with self.state:
            self._checkCanApply()

    def onAddCase(self) -> None:
        tumorId = self.logic.tumorSegmentId(self.output)
        try:
            if not self.logic.editedTumorSegmentId(self.output, self.ct) and not self.addUnconfirmed:
                self.addUnconfirmed = True
                self._say("The tumor segment has not been corrected. Click Add case again to add it as it is.", "warning")
                return
            liverNode, liverId = self.liver if self.liver else (None, None)
            caseId = self.logic.addCase(self.ct, liverNode, liverId, self.output, tumorId, notes=self.state.lts_notes)
        except Exception as error:  # noqa: BLE001
            self._fail("Could not add the case", error)
            return
        self.addUnconfirmed = False
        self._refreshCases()
        self._say(f"Added case {caseId}", "success")
        self._checkCanApply()

    def onRemoveCase(self) -> None:
        caseId = self.state.lts_case
        if not caseId:
            return
        try:
            self.logic.removeCase(caseId)
        except Exception as error:  # noqa: BLE001
            self._fail("Could not remove the case", error)
            return
        self._refreshCases()
        self._say(f"Removed case {caseId}", "success")
        self._checkCanApply()

    # ---- retrain -----------------------------------------------------------------------------
    def onRetrain(self) -> None:
        if self.trainingJob is not None:
            return
        steps = str(self.state.lts_train_steps or "").strip()
        try:
            maxSteps = int(steps) if steps else None
        except ValueError:
            self._say(f"Could not start training: steps '{steps}' is not a whole number (leave it empty for the default)", "error")
            return
        try:
            self.trainingJob = self.logic.startTraining(minutes=self.state.lts_train_minutes, maxSteps=maxSteps)
        except Exception as error:  # noqa: BLE001
            self._fail("Could not start training", error)
            return
        self.state.lts_train_percent, self.state.lts_train_text = 0, "Starting training..."
        self._checkCanApply()
        self._startPolling()

    def onCancelTraining(self) -> None:
        if self.trainingJob is not None:
            self.trainingJob.cancel()
            self.state.lts_train_text = "Cancelling..."

    def _pollTraining(self) -> None:
        job = self.trainingJob
        for info in job.poll():
            self.state.lts_train_percent, self.state.lts_train_text = rules.describeProgress(info)
        if not job.finished:
            return
        self.trainingJob = None
        try:
            self._trainingFinished(job)
        finally:
            self._checkCanApply()

    def _trainingFinished(self, job) -> None:
        if job.cancelled:
            self.state.lts_train_text = "Training cancelled; no model was written."
            return
        if job.error:
            self.state.lts_train_text = f"Training failed: {job.error}"
            self._say(f"Training failed: {job.error}", "error")
            return
        version = job.outPath.name
        dice = (job.result.get("validation") or {}).get("dice")
        diceText = "n/a" if dice is None else f"{dice:.3f}"
        self._refreshModels()
        warning = self.logic.modelWarning(liblogic.ModelInfo.from_folder(job.outPath))
        text = f"New model {version}: validation Dice {diceText}."
        text += f" Caution: it is {warning}." if warning else ""
        text += f" Warnings: {'; '.join(job.warnings)}." if job.warnings else ""
        self.state.lts_train_text = text
        self._say(text + " Press Use in the model list to segment with it (earlier versions stay).", "success")

    # ---- background jobs ---------------------------------------------------------------------
    def _startPolling(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.ensure_future(self._pollJobs())

    async def _pollJobs(self) -> None:
        """The widget's QTimer: progress of the background jobs, and their results once they end."""
        while self.segmentJob is not None or self.trainingJob is not None:
            await asyncio.sleep(JOB_POLL_S)
            with self.state:
                try:
                    if self.trainingJob is not None:
                        self._pollTraining()
                    if self.segmentJob is not None:
                        self._pollSegment()
                except Exception as error:  # noqa: BLE001 - a bug must not stop the polling
                    self._fail("Background job", error)

    def stopJobs(self) -> None:
        self.logic.stopJobs()
        shutil.rmtree(self.scratch, ignore_errors=True)

    # ---- downloads ---------------------------------------------------------------------------
    def onDownload(self, kind: str):
        folder = Path(tempfile.mkdtemp(prefix="download-", dir=self.scratch))
        try:
            base = (self.ct.GetName() if self.ct is not None else "result") + "-tumor"
            paths = self.logic.exportResult(self.output, folder, base)
            return self.server.protocol.addAttachment(paths[kind].read_bytes())
        except Exception as error:  # noqa: BLE001
            self._fail("Could not save the result", error)
            return None
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def downloadName(self) -> str:
        return (self.ct.GetName() if self.ct is not None else "result") + "-tumor"

    # ---- page --------------------------------------------------------------------------------
    def _uploadInput(self, label: str, handler, test_id: str, multiple: bool):
        """A file field whose files go to `handler` in chunks (trame-slicer's chunk loader)."""
        files: list = []

        async def chunk(received):
            if received:
                files.extend(received)
                return
            batch = list(files)
            files.clear()
            with self.state:
                await handler(batch)

        with html.Div(id=test_id):
            v3.VFileInput(
                label=label, multiple=multiple, density="compact", hide_details=True, prepend_icon="mdi-upload",
                disabled=("lts_segmenting",), classes="my-1",
                change=(
                    "window.load_files_by_chunks($event.target.files, "
                    f"{{ trigger_name: '{self.server.controller.trigger_name(chunk)}' }})"
                ),
            )

    def _buildUi(self) -> None:
        ctrl = self.server.controller
        with SinglePageWithDrawerLayout(self.server, full_height=True) as layout:
            self.ui = layout
            layout.root.theme = "dark"
            layout.title.set_text(TITLE)
            layout.drawer.width = 430
            client.Style(".lts-row:hover { background: rgba(255,255,255,0.08); cursor: pointer; }"
                         " .lts-table td, .lts-table th { padding: 2px 6px; font-size: 12px; text-align: right; }")
            with layout.toolbar:
                v3.VSpacer()
                html.Div("Library: {{ lts_library }}", classes="text-caption mr-4")
            with layout.drawer:
                with html.Div(classes="pa-2"):
                    v3.VAlert(v_if="lts_message", text=("lts_message",), type=("lts_message_type",), density="compact",
                              classes="mb-2", id="lts-message", closable=True)
                    self._inputsCard(ctrl)
                    self._segmentCard(ctrl)
                    self._correctCard(ctrl)
                    self._libraryCard(ctrl)
            with layout.content:
                with html.Div(style="height: calc(100vh - 94px); width: 100%;", id="lts-views"):
                    self.layoutManager.initialize_layout_grid(layout)

    def _inputsCard(self, ctrl) -> None:
        with v3.VCard(title="1. CT and liver", density="compact", classes="mb-2"):
            with v3.VCardText():
                self._uploadInput("CT: file, DICOM files or .zip", self.onUploadCt, "upload-ct", multiple=True)
                html.Div("CT: {{ lts_ct_name || 'none' }}", classes="text-caption", id="lts-ct-name")
                self._uploadInput("Liver mask, optional (.nii.gz, .nrrd, .seg.nrrd)", self.onUploadLiver, "upload-liver",
                                  multiple=False)
                html.Div("Liver: {{ lts_liver_name || 'none (Segment finds it)' }}", classes="text-caption", id="lts-liver-name")
                with html.Div(classes="d-flex align-center mt-1"):
                    v3.VSelect(label="or a library case", items=("lts_cases",), v_model=("lts_case",), density="compact",
                               hide_details=True, id="lts-case-select")
                    v3.VBtn("Open", click=self.onOpenCase, disabled=("!lts_can_open",), classes="ml-1",
                            id="lts-open-case")

    def _segmentCard(self, ctrl) -> None:
        with v3.VCard(title="2. Segment", density="compact", classes="mb-2"):
            with v3.VCardText():
                html.Div("Active model: {{ lts_active_model || 'none' }}", classes="text-caption", id="lts-active-model")
                with html.Div(classes="d-flex align-center"):
                    v3.VBtn("Segment", color="primary", click=self.onSegment, disabled=("!lts_can_segment",),
                            id="lts-segment")
                    v3.VBtn("Cancel", click=self.onCancelSegment, disabled=("!lts_segmenting",), classes="ml-2",
                            id="lts-cancel-segment")
                html.Div("{{ lts_segment_tip }}", v_if="!lts_can_segment && lts_segment_tip", classes="text-caption text-grey")
                with html.Div(v_if="lts_segmenting", id="lts-segment-progress"):
                    v3.VProgressLinear(model_value=("lts_segment_percent",), height=14, color="primary", classes="mt-2")
                    html.Div("{{ lts_segment_text }}", classes="text-caption")
                v3.VSlider(label="Threshold", v_model=("lts_threshold",), min=0.01, max=0.99, step=0.01, thumb_label=True,
                           disabled=("!lts_has_result",), hide_details=True, classes="mt-2",
                           end=(self.onThreshold, "[$event]"))
                v3.VCheckbox(label="Replace my edits (re-threshold, Segment again)", v_model=("lts_replace_edits",),
                             density="compact", hide_details=True)
                with html.Div(v_if="lts_lesions.length", style="max-height: 180px; overflow-y: auto;"):
                    with html.Table(classes="lts-table", id="lts-lesions", style="width: 100%;"):
                        with html.Tr():
                            html.Th("{{ h }}", v_for="h in lts_lesion_headers")
                        with html.Tr(v_for="(row, i) in lts_lesions", classes="lts-row",
                                     click=(self.onLesionClicked, "[i]")):
                            html.Td("{{ c }}", v_for="c in row")
                html.Div("No lesion found.", v_if="lts_has_result && !lts_lesions.length", classes="text-caption")

    def _correctCard(self, ctrl) -> None:
        with v3.VCard(title="3. Correct", density="compact", classes="mb-2"):
            with v3.VCardText():
                html.Div("{{ lts_tumor_status }}", classes="text-caption", id="lts-tumor-status")
                with html.Div(v_show="lts_has_result", id="lts-editor"):
                    with html.Div(style="height: 520px; display: flex; flex-direction: column;"):
                        self.editorUi = SegmentEditorUI()
                    with html.Div(classes="d-flex align-center"):
                        html.Span("Undo / redo", classes="text-caption mr-2")
                        SegmentEditorUndoRedoUI(editor_ui=self.editorUi, row=True)
                    self.editorLogic.set_ui(self.editorUi)
                with html.Div(classes="d-flex flex-wrap mt-2", v_if="lts_has_result"):
                    for kind, text in (("segmentation", ".seg.nrrd"), ("labelmap", "labelmap"), ("lesions", "lesion CSV"),
                                       ("dicom_seg", "DICOM SEG")):
                        suffix = {"segmentation": ".seg.nrrd", "labelmap": "-labelmap.nrrd", "lesions": "-lesions.csv",
                                  "dicom_seg": ".dcm"}[kind]
                        shown = {"v_if": "lts_ct_dicom"} if kind == "dicom_seg" else {}  # only for a DICOM CT
                        v3.VBtn(f"Download {text}", size="small", classes="mr-1 mb-1", id=f"lts-download-{kind}", **shown,
                                click=(f"utils.download(lts_ct_name + '-tumor{suffix}', "
                                       f"trigger('{ctrl.trigger_name(self.onDownload)}', ['{kind}']), "
                                       "'application/octet-stream')"))

    def _libraryCard(self, ctrl) -> None:
        with v3.VCard(title="4. Learn", density="compact", classes="mb-2"):
            with v3.VCardText():
                v3.VTextField(label="Notes for the case", v_model=("lts_notes",), density="compact", hide_details=True)
                with html.Div(classes="d-flex mt-1"):
                    v3.VBtn("Add case", click=self.onAddCase, disabled=("!lts_can_add",), id="lts-add-case")
                    v3.VBtn("Remove selected case", click=self.onRemoveCase, disabled=("!lts_can_remove",), classes="ml-2",
                            size="small", id="lts-remove-case")
                html.Div("{{ lts_cases.length }} case(s) in the library", classes="text-caption mt-1", id="lts-case-count")
                with html.Div(classes="text-caption", id="lts-case-list"):
                    html.Div("{{ c.title }}", v_for="c in lts_cases")
                with html.Div(classes="d-flex align-center mt-2"):
                    v3.VTextField(label="Minutes", v_model=("lts_train_minutes",), type="number", density="compact",
                                  hide_details=True, style="max-width: 90px;", id="lts-train-minutes")
                    v3.VTextField(label="Steps (empty: default)", v_model=("lts_train_steps",), density="compact",
                                  hide_details=True, classes="ml-1", style="max-width: 150px;", id="lts-train-steps")
                    v3.VBtn("Retrain", click=self.onRetrain, disabled=("!lts_can_train",), classes="ml-1", id="lts-retrain")
                    v3.VBtn("Cancel", click=self.onCancelTraining, disabled=("!lts_training",), classes="ml-1",
                            size="small", id="lts-cancel-training")
                html.Div("{{ lts_train_tip }}", v_if="!lts_can_train && lts_train_tip", classes="text-caption text-grey")
                v3.VProgressLinear(v_if="lts_training", model_value=("lts_train_percent",), height=14, color="primary",
                                   classes="mt-2", id="lts-train-progress")
                html.Div("{{ lts_train_text }}", classes="text-caption", id="lts-train-text")
                html.Div("Models", classes="text-subtitle-2 mt-2")
                with html.Div(id="lts-models"):
                    with html.Div(v_for="m in lts_models", classes="d-flex align-center lts-model"):
                        html.Span("{{ m.label }}", classes="text-caption flex-grow-1", title=("m.warning",))
                        v3.VChip("active", v_if="m.active", size="x-small", color="green", classes="ml-1")
                        v3.VBtn("Use", v_else=True, size="x-small", classes="ml-1",
                                click=(self.onUseModel, "[m.version]"), disabled=("lts_segmenting",))


def _cell(value, integer=False):
    """A lesion table value as the table shows it (numbers rounded; the lesion number whole)."""
    if isinstance(value, float) and integer and value.is_integer():
        return int(value)
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 1 or value == 0 else f"{value:.2f}"
    return value


def serve(libraryPath=None, host="127.0.0.1", port=8080, ready=None) -> None:
    """Build the page and serve it until interrupted (blocking); `ready(url)` is called once it listens."""
    app = LiverTumorSegWebApp(libraryPath=libraryPath)

    @app.server.controller.add("on_server_ready")
    def _announce(**_kwargs):
        url = f"http://{host}:{app.server.port}/"
        # After the first page has had its turn: the import holds the interpreter while it runs.
        preload = threading.Timer(PRELOAD_AFTER_S, liblogic.preloadEngine)
        preload.daemon = True
        preload.start()
        if ready is not None:
            ready(url)

    try:
        app.server.start(host=host, port=port, open_browser=False, show_connection_info=False, timeout=0,
                         disable_logging=True)
    finally:
        app.stopJobs()
