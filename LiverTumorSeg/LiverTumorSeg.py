"""LiverTumorSeg: segment liver tumors in CT, correct them, add the case, retrain.

The Widget binds the parameter node to the .ui, starts jobs and shows results; everything it
does is a call into LiverTumorSegLib.slicer.logic (scriptable without the GUI).
"""

import importlib.metadata
import importlib.util
import logging
import sys
import time
from pathlib import Path
from typing import Annotated

import qt
import vtk

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin
from slicer import vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode


def _forgetStaleLib() -> None:
    """Developer mode: make Reload pick up edits of LiverTumorSegLib too.

    slicer.util.reloadScriptedModule re-executes only this file; the Lib modules it imports stay
    cached in sys.modules. Dropping them here (before the import below) makes Reload import them
    afresh. Outside developer mode, and on the first import, nothing is dropped.
    """
    if not any(name == "LiverTumorSegLib" or name.startswith("LiverTumorSegLib.") for name in sys.modules):
        return
    if not slicer.util.settingsValue("Developer/DeveloperMode", False, converter=slicer.util.toBool):
        return
    for name in [n for n in sys.modules if n == "LiverTumorSegLib" or n.startswith("LiverTumorSegLib.")]:
        del sys.modules[name]


_forgetStaleLib()

from LiverTumorSegLib.slicer import logic as liblogic  # noqa: E402
from LiverTumorSegLib.slicer import rules  # noqa: E402
from LiverTumorSegLib.errors import Cancelled, InputError  # noqa: E402

LIBRARY_SETTING = "LiverTumorSeg/LibraryFolder"
JOB_POLL_MS = 500
# The library folder is taken over only once typing has paused this long (ctkPathLineEdit emits
# currentPathChanged on every keystroke).
LIBRARY_EDIT_PAUSE_MS = 1200
# Oldest PyTorch the model files and the engine are checked against (README, Versions).
TORCH_MINIMUM = (2, 1)
# Download sizes users are told before anything is installed. The PyTorch extension's installer
# always adds torchvision (unused here).
TORCH_SIZE_TEXT = ("about 200 MB for the CPU build, 2-4 GB with NVIDIA GPU support; the PyTorch "
                   "extension also installs torchvision (about 10-30 MB more)")


def resourcesDir() -> Path:
    """Resources/ beside the module file (build/install tree) or one level up (source tree)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "Resources", here.parent / "Resources"):
        if (candidate / "UI").is_dir():
            return candidate
    return here / "Resources"


def libraryFolderSetting() -> Path:
    """The case library folder: a persistent application setting, defaulting under Slicer's settings folder."""
    value = qt.QSettings().value(LIBRARY_SETTING)
    return Path(value) if value else liblogic.defaultLibraryPath()


#
# LiverTumorSeg
#


class LiverTumorSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Liver Tumor Segmentation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["LiverTumorSeg contributors"]
        self.parent.helpText = _("""
Segments liver tumors in a CT inside the liver (found automatically, taken from TotalSegmentator,
or a liver segment or ROI you choose) with MHP-Net and a pass for the 10-25 mm spots it misses,
shows a lesion table,
and learns from your corrections: correct the result in the Segment Editor, add the case to your
training set, and Retrain (in the background). Every trained version is kept; choose an older one
in the model list to roll back.
""")
        self.parent.acknowledgementText = _("""
MHP-Net: multi-scale Hessian-enhanced patches for liver tumor segmentation. Built on 3D Slicer,
PyTorch, SimpleITK and SciPy.
""")
        icon = resourcesDir() / "Icons" / "LiverTumorSeg.png"
        if icon.is_file():  # the base class only looks beside the module file (install tree)
            self.parent.icon = qt.QIcon(str(icon))


#
# LiverTumorSegParameterNode
#


@parameterNodeWrapper
class LiverTumorSegParameterNode:
    """
    inputVolume - CT to segment. liverSource - where the liver comes from (rules.LIVER_SOURCES: the
    bundled network, TotalSegmentator, or liverSegmentation/liverSegmentId or liverRoi).
    outputSegmentation - where results go (None: a new node). threshold - the decision threshold
    (the slider re-thresholds the kept probability map). trainingMinutes - Retrain time budget.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    liverSource: Annotated[str, Choice(list(rules.LIVER_SOURCES))] = rules.LIVER_AUTOMATIC
    liverSegmentation: vtkMRMLSegmentationNode
    liverSegmentId: str = ""
    liverRoi: vtkMRMLMarkupsROINode
    outputSegmentation: vtkMRMLSegmentationNode
    showProbability: bool = True
    threshold: Annotated[float, WithinRange(0.01, 0.99)] = 0.5
    trainingMinutes: Annotated[int, WithinRange(1, 240)] = 5
    caseNotes: str = ""


#
# LiverTumorSegWidget
#


class LiverTumorSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._updatingGui = False
        self._trainingJob = None
        self._segmentJob = None
        self._segmentFindsLiver = False  # the running Segment finds the liver itself (source Automatic)
        self._runningTotalSegmentator = False
        self._shownOutputId = None
        self._caseCount = 0
        self._hasModel = False
        self._dependenciesDeclined = False

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(str(resourcesDir() / "UI" / "LiverTumorSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = LiverTumorSegLogic()
        self._jobTimer = qt.QTimer()
        self._jobTimer.setInterval(JOB_POLL_MS)
        self._jobTimer.connect("timeout()", self._pollJobs)
        self._libraryTimer = qt.QTimer()
        self._libraryTimer.setSingleShot(True)
        self._libraryTimer.setInterval(LIBRARY_EDIT_PAUSE_MS)
        self._libraryTimer.connect("timeout()", self._applyLibraryFolder)
        self.ui.trainingProgressBar.setVisible(False)
        self.ui.segmentProgressBar.setVisible(False)
        self.ui.libraryPathLineEdit.currentPath = str(self.logic.libraryPath)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.liverSegmentSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onLiverSegmentChanged)
        self.ui.liverSegmentSelector.connect("currentSegmentChanged(QString)", self.onLiverSegmentChanged)
        self.ui.modelSelector.connect("activated(int)", self.onModelChosen)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegment)
        self.ui.cancelSegmentButton.connect("clicked(bool)", self.onCancelSegment)
        self.ui.thresholdSliderWidget.connect("valueChanged(double)", self.onThresholdChanged)
        self.ui.lesionTableView.connect("selectionChanged()", self.onLesionSelected)
        self.ui.correctButton.connect("clicked(bool)", self.onCorrect)
        self.ui.libraryPathLineEdit.connect("currentPathChanged(QString)", self.onLibraryFolderChanged)
        self.ui.addCaseButton.connect("clicked(bool)", self.onAddCase)
        self.ui.removeCaseButton.connect("clicked(bool)", self.onRemoveCase)
        self.ui.caseListWidget.connect("itemSelectionChanged()", self._checkCanApply)
        self.ui.retrainButton.connect("clicked(bool)", self.onRetrain)
        self.ui.cancelTrainingButton.connect("clicked(bool)", self.onCancelTraining)

        self.initializeParameterNode()
        self._refreshModels()
        self._refreshCases()

    def cleanup(self) -> None:
        """Slicer is closing (or the module is unloaded): stop the background jobs and wait for
        them, so no process, scratch folder or half result is left behind."""
        self._jobTimer.stop()
        if self.logic is not None:
            self.logic.stopJobs()
        self._libraryTimer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        # The Logic cancels the running jobs itself (Segment's CT and output are going away).
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = self.logic.defaultInputVolume()

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            offered = self.logic.liverSources()
            if self._parameterNode.liverSource not in offered:  # e.g. a scene saved where TotalSegmentator was installed
                self._parameterNode.liverSource = rules.LIVER_AUTOMATIC
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self._offerLiverSources(offered)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _offerLiverSources(self, offered) -> None:
        """connectGui fills the liver source box with every choice: drop those not offered here
        (TotalSegmentator, last, when not installed; the connector reads choices[currentIndex],
        so only trailing ones may go) and give each its tooltip."""
        selector = self.ui.liverSourceSelector
        while selector.count > len(offered):
            selector.removeItem(selector.count - 1)
        tips = {rules.LIVER_AUTOMATIC: _("The bundled liver network finds the liver (seconds, offline)."),
                rules.LIVER_SEGMENT: _("The liver segment (or ROI) chosen below."),
                rules.LIVER_TOTALSEGMENTATOR: _("The TotalSegmentator extension's liver (minutes on a CPU).")}
        for index, source in enumerate(offered):
            selector.setItemData(index, tips[source], qt.Qt.ToolTipRole)

    # ---- GUI state -------------------------------------------------------------------------
    def _checkCanApply(self, caller=None, event=None) -> None:
        """Enable each action by the rules the web page shares (rules.py); the tooltip says what is missing."""
        p = self._parameterNode
        self._syncLiverSelector()
        output = p.outputSegmentation if p else None
        givesLiver = bool(p and p.liverSource == rules.LIVER_SEGMENT)
        self.ui.liverSegmentSelector.enabled = givesLiver
        self.ui.liverRoiSelector.enabled = givesLiver
        state = rules.PanelState(
            hasCt=bool(p and p.inputVolume), liverSource=p.liverSource if p else rules.LIVER_AUTOMATIC,
            hasLiverSegment=bool(p and p.liverSegmentation and p.liverSegmentId),
            hasLiverRoi=bool(p and p.liverRoi), hasModel=self._hasModel, hasTumor=bool(self.logic.tumorSegmentId(output)),
            hasProbability=self.logic.probabilityNode(output) is not None, caseCount=self._caseCount,
            caseSelected=bool(self.ui.caseListWidget.selectedItems()),
            segmenting=self._segmentJob is not None or self._runningTotalSegmentator,
            training=self._trainingJob is not None)
        for widget, blockers, tip in (
                (self.ui.segmentButton, rules.segmentBlockers,
                 _("Segment liver tumors into the output segmentation, in the background")),
                (self.ui.correctButton, rules.correctBlockers, _("Open the Segment Editor on the result")),
                (self.ui.addCaseButton, rules.addCaseBlockers, _("Save CT, liver and tumor segment as a training case")),
                (self.ui.removeCaseButton, rules.removeCaseBlockers, _("Remove the selected case")),
                (self.ui.retrainButton, rules.retrainBlockers, _("Fine-tune the active model on all cases")),
                (self.ui.libraryPathLineEdit, rules.libraryBlockers,
                 _("Folder holding your training cases and model versions (a setting, kept between sessions).")),
                (self.ui.thresholdSliderWidget, rules.thresholdBlockers,
                 _("Probability above which a voxel is tumor. Moving it re-thresholds the kept probability "
                   "map without running the network again."))):
            missing = blockers(state)
            widget.enabled = not missing
            widget.toolTip = tip if not missing else _("To enable: ") + "; ".join(self._reasonText(r) for r in missing)
        self.ui.cancelSegmentButton.enabled = state.segmenting
        self.ui.cancelTrainingButton.enabled = state.training
        table = self.logic.lesionTableNode(output)
        if self.ui.lesionTableView.mrmlTableNode() != table:
            self.ui.lesionTableView.setMRMLTableNode(table)
        outputId = output.GetID() if output else None
        if outputId != self._shownOutputId:
            self._shownOutputId = outputId
            qt.QTimer.singleShot(0, self._showOutputThreshold)

    def _showOutputThreshold(self) -> None:
        """Put the threshold the output segmentation was made with back on the slider (after a
        declined re-threshold, or when another output is chosen): the slider's parameter-node
        connector has already taken the value the user dragged to."""
        p = self._parameterNode
        if not p or self._updatingGui or p.outputSegmentation is None:
            return
        value = p.outputSegmentation.GetAttribute(liblogic.THRESHOLD_ATTRIBUTE)
        if value is None:
            return
        value = min(max(float(value), 0.01), 0.99)
        if abs(p.threshold - value) < 1e-6:
            return
        self._updatingGui = True
        try:
            p.threshold = value
        finally:
            self._updatingGui = False

    @staticmethod
    def _reasonText(reason: str) -> str:
        """The panel's words for why an action is blocked (rules.py's reasons)."""
        return {
            rules.SEGMENTING: _("segmentation is running: wait for it or Cancel it"),
            rules.TRAINING: _("training is running: wait for it or Cancel it"),
            rules.NO_CT: _("choose a CT volume"),
            rules.NO_LIVER: _("choose the liver segment or an ROI around the liver"),
            rules.NO_LIVER_SEGMENT: _("choose the liver as a segment (an ROI box is not a liver outline)"),
            rules.NO_MODEL: _("there is no model yet: add corrected cases and Retrain"),
            rules.NO_RESULT: _("segment first"),
            rules.NO_TUMOR: _("segment (and correct) the tumors first"),
            rules.NO_PROBABILITY: _("segment first (the slider re-thresholds the result)"),
            rules.NO_CASE: _("add at least one case"),
            rules.NO_CASE_SELECTED: _("select a case"),
        }[reason]

    def _syncLiverSelector(self) -> None:
        """The segment selector has no parameter-node connector: mirror it by hand."""
        p = self._parameterNode
        if not p or self._updatingGui:
            return
        self._updatingGui = True
        try:
            selector = self.ui.liverSegmentSelector
            if selector.currentNode() != p.liverSegmentation:
                selector.setCurrentNode(p.liverSegmentation)
            if p.liverSegmentId and selector.currentSegmentID() != p.liverSegmentId:
                selector.setCurrentSegmentID(p.liverSegmentId)
        finally:
            self._updatingGui = False

    def onLiverSegmentChanged(self, *args) -> None:
        if not self._parameterNode or self._updatingGui:
            return
        selector = self.ui.liverSegmentSelector
        with slicer.util.NodeModify(self._parameterNode.parameterNode):
            self._parameterNode.liverSegmentation = selector.currentNode()
            self._parameterNode.liverSegmentId = selector.currentSegmentID() or ""

    def _refreshModels(self) -> None:
        self.ui.modelSelector.clear()
        models = self.logic.listModels()
        active = self.logic.activeModelVersion()
        for info in models:
            self.ui.modelSelector.addItem(self.logic.modelLabel(info), info.version)
            index = self.ui.modelSelector.count - 1
            warning = self.logic.modelWarning(info)
            tip = "\n".join(t for t in ((_("This version is ") + warning) if warning else "", self.logic.modelSynthesis(info)) if t)
            if tip:
                self.ui.modelSelector.setItemData(index, tip, qt.Qt.ToolTipRole)
            if info.version == active:
                self.ui.modelSelector.setCurrentIndex(index)
        self._hasModel = bool(models)
        if not models:
            self.ui.modelSelector.addItem(_("No model yet: add corrected cases and Retrain"), "")
        self._checkCanApply()

    def _refreshCases(self) -> None:
        self.ui.caseListWidget.clear()
        cases = self.logic.listCases()
        for case in cases:
            text = _("{id}: {n} tumor(s), {ml:.1f} mL").format(id=case.case_id, n=case.tumor_count, ml=case.tumor_volume_ml)
            if case.problem:
                text = _("{id}: \u26a0 damaged").format(id=case.case_id)
            item = qt.QListWidgetItem(text + (f" - {case.notes}" if case.notes else ""))
            item.setData(qt.Qt.UserRole, case.case_id)
            item.setToolTip(case.problem or f"{case.source}\n{case.created}")
            self.ui.caseListWidget.addItem(item)
        self._caseCount = len(cases)
        self._checkCanApply()

    # ---- actions ---------------------------------------------------------------------------
    def onModelChosen(self, index: int) -> None:
        version = self.ui.modelSelector.itemData(index)
        if not version:
            return
        with slicer.util.tryWithErrorDisplay(_("Could not activate the model."), waitCursor=True):
            self.logic.setActiveModel(version)
            slicer.util.showStatusMessage(_("Active model: {v}").format(v=version), 3000)

    def onSegment(self) -> None:
        """Start Segment in a background process (`livertumorseg segment`); _pollJobs finishes it."""
        if self._segmentJob is not None or self._runningTotalSegmentator or not self._ensureDependencies():
            return
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Could not start the segmentation."), waitCursor=True):
            replace = False
            if p.outputSegmentation is not None and self.logic.editedTumorSegmentId(p.outputSegmentation, p.inputVolume):
                replace = slicer.util.confirmYesNoDisplay(
                    _("The tumor segment in '{name}' was edited. Replace your edits with the new result?\n\n"
                      "No keeps the edited segment and adds the new result as another segment.").format(
                        name=p.outputSegmentation.GetName()))
            if p.liverSource == rules.LIVER_TOTALSEGMENTATOR:
                self._takeTotalSegmentatorLiver()
            givesLiver = p.liverSource == rules.LIVER_SEGMENT
            self._segmentJob = self.logic.startSegment(
                p.inputVolume, p.liverSegmentation if givesLiver else None, (p.liverSegmentId or None) if givesLiver else None,
                p.liverRoi if givesLiver else None, outputSegmentationNode=p.outputSegmentation, replaceEdited=replace,
                showProbability=p.showProbability)
            self._segmentFindsLiver = not givesLiver
            self.ui.segmentProgressBar.value = 0
            self.ui.segmentProgressBar.setFormat(_("Starting..."))
            self.ui.segmentProgressBar.setVisible(True)
            self.ui.segmentStatusLabel.text = _("Segmenting in the background...")
            self._jobTimer.start()
        self._checkCanApply()

    def _takeTotalSegmentatorLiver(self) -> None:
        """TotalSegmentator's liver into the output's 'Liver' segment, which then becomes the chosen
        liver segment (to correct; what Segment searches and Add case stores). TotalSegmentator's
        process blocks: its log lines keep the panel painted meanwhile, and the panel is disabled
        until it returns, so the CT, the output and the choices cannot change under it (and no
        Cancel is offered that could not cancel it)."""
        p = self._parameterNode

        def showLog(text) -> None:
            if text.strip():
                self.ui.segmentStatusLabel.text = _("TotalSegmentator: {line}").format(line=text.strip()[:120])
            slicer.app.processEvents()

        def confirmInstall() -> bool:
            return slicer.util.confirmOkCancelDisplay(
                _("TotalSegmentator needs its own Python packages (hundreds of MB, several minutes to install; "
                  "its model weights are downloaded on first use). Install them now?"),
                _("Install TotalSegmentator's packages"))

        ct, output = p.inputVolume, p.outputSegmentation
        self._runningTotalSegmentator = True
        self._checkCanApply()
        self.parent.enabled = False
        try:
            self.ui.segmentStatusLabel.text = _("Finding the liver with TotalSegmentator (minutes on a CPU)...")
            output, liverId = self.logic.liverFromTotalSegmentator(ct, output, log=showLog, confirmInstall=confirmInstall)
        finally:
            self.parent.enabled = True
            self._runningTotalSegmentator = False
        with slicer.util.NodeModify(p.parameterNode):
            p.outputSegmentation = output
            p.liverSegmentation, p.liverSegmentId = output, liverId
            p.liverSource = rules.LIVER_SEGMENT

    def onCancelSegment(self) -> None:
        if self._segmentJob is not None:
            self._segmentJob.cancel()
            self.ui.segmentStatusLabel.text = _("Cancelling...")

    def _pollJobs(self) -> None:
        """QTimer slot: progress of the background jobs, and their results once they end."""
        if self._trainingJob is not None:
            self._pollTraining()
        if self._segmentJob is not None:
            self._pollSegment()
        if self._trainingJob is None and self._segmentJob is None:
            self._jobTimer.stop()

    def _pollSegment(self) -> None:
        job = self._segmentJob
        job.poll()  # the newest progress report is job.latest
        if not job.finished:
            if not job.cancelled:  # keep "Cancelling..." until it has stopped
                self._showSegmentProgress(job)
            return
        self._segmentJob = None
        self.ui.segmentProgressBar.setVisible(False)
        self.ui.segmentProgressBar.setFormat("%p%")
        try:
            self._segmentFinished(job)
        finally:
            self._checkCanApply()

    def _showSegmentProgress(self, job) -> None:
        """Stage and step in the bar (e.g. "Network step 12/40"), with the time since the start in the label."""
        words = rules.SegmentWords(reading=_("Segmenting in the background: {t} elapsed"),
                                   writingBar=_("Writing the result..."), writing=_("Writing the result: {t} elapsed"))
        percent, barText, text = rules.segmentProgress(job.latest, job.elapsed, job.stageSpans, words)
        if percent is not None:  # None: the CT is still being read (no report yet)
            self.ui.segmentProgressBar.value = percent
            self.ui.segmentProgressBar.setFormat(barText)  # as Slicer's CLI stage bar shows its message
        self.ui.segmentStatusLabel.text = text

    def _segmentFinished(self, job) -> None:
        """Put the result into the scene; a cancelled or failed job is reported, nothing changes."""
        p = self._parameterNode
        try:
            with slicer.util.WaitCursor():
                segmentation, table = self.logic.finishSegment(job)
        except Cancelled:
            self.ui.segmentStatusLabel.text = (_("Segmentation cancelled because the scene was closed.") if job.sceneClosed
                                               else _("Segmentation cancelled; the output segmentation was not changed."))
            return
        except Exception as error:  # one line in the panel; a bug's traceback goes to the Python console only
            reason = str(error).splitlines()[0] if str(error).strip() else type(error).__name__
            if not isinstance(error, InputError):
                logging.exception("LiverTumorSeg: putting the segmentation into the scene failed")
                reason = _("{kind}: {reason} (details in the Python console)").format(kind=type(error).__name__, reason=reason)
            self.ui.segmentStatusLabel.text = _("Segmentation failed: {error}").format(error=reason)
            slicer.util.errorDisplay(_("Segmentation failed: {error}").format(error=reason), detailedText="\n".join(job.log))
            return
        lesions = table.GetNumberOfRows()
        self.ui.segmentStatusLabel.text = _("{n} lesion(s) found in {t}.").format(
            n=lesions, t=rules.formatMinutes(job.elapsed))
        if job.warnings:  # e.g. a liver segment covering the whole CT, values that are not HU
            self.ui.segmentStatusLabel.text += " " + _("Warning: {w}").format(w=job.warnings[-1])
            self.ui.segmentStatusLabel.toolTip = "\n".join(job.warnings)
        if p is None:
            return
        self._updatingGui = True  # the threshold below comes from the model: no re-threshold
        try:
            with slicer.util.NodeModify(p.parameterNode):
                p.outputSegmentation = segmentation
                p.threshold = float(segmentation.GetAttribute(liblogic.THRESHOLD_ATTRIBUTE))
                foundLiver = self.logic.foundLiverSegmentId(segmentation)
                if foundLiver and self._segmentFindsLiver:
                    # The liver it found becomes the chosen liver segment: corrected in the editor, it
                    # is what the next Segment searches and what Add case stores.
                    p.liverSegmentation, p.liverSegmentId = segmentation, foundLiver
                    p.liverSource = rules.LIVER_SEGMENT
            self._shownOutputId = segmentation.GetID()
        finally:
            self._updatingGui = False
        slicer.util.showStatusMessage(_("Segmentation done"), 3000)

    def onThresholdChanged(self, value: float) -> None:
        p = self._parameterNode
        if self._updatingGui or not p or self.logic.probabilityNode(p.outputSegmentation) is None:
            return
        current = p.outputSegmentation.GetAttribute(liblogic.THRESHOLD_ATTRIBUTE)
        if current is not None and abs(float(current) - value) < 1e-6:
            return  # e.g. the GUI being filled from the parameter node
        with slicer.util.tryWithErrorDisplay(_("Re-thresholding failed."), waitCursor=True):
            if self.logic.editedTumorSegmentId(p.outputSegmentation) and not slicer.util.confirmYesNoDisplay(
                    _("The tumor segment was edited. Re-thresholding replaces your edits. Continue?")):
                qt.QTimer.singleShot(0, self._showOutputThreshold)  # after the connector has stored `value`
                return
            try:
                self.logic.rethreshold(p.outputSegmentation, value, replaceEdited=True)
            except Exception:
                qt.QTimer.singleShot(0, self._showOutputThreshold)
                raise

    def onLesionSelected(self) -> None:
        view = self.ui.lesionTableView
        table = view.mrmlTableNode()
        if table is None or not view.currentIndex().isValid():
            return
        # The lesion table shows column titles as the header, so model rows are table rows.
        row = view.sortFilterProxyModel().mapToSource(view.currentIndex()).row()
        if row >= 0:
            with slicer.util.tryWithErrorDisplay(_("Could not show the lesion.")):
                self.logic.jumpToLesion(table, row)

    def onCorrect(self) -> None:
        p = self._parameterNode
        segmentation = p.outputSegmentation
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.SegmentEditorWidget.editor
        editor.setSegmentationNode(segmentation)
        editor.setSourceVolumeNode(p.inputVolume or segmentation.GetNodeReference("LiverTumorSeg.CT"))
        segmentId = self.logic.tumorSegmentId(segmentation)
        if segmentId:
            editor.setCurrentSegmentID(segmentId)

    def onLibraryFolderChanged(self, path: str) -> None:
        """currentPathChanged comes with every keystroke: wait until typing pauses."""
        self._libraryTimer.start()

    def _applyLibraryFolder(self) -> None:
        """Take over the library folder once it is a usable absolute path (an existing folder, or
        a new one inside an existing folder); partial paths typed on the way are ignored."""
        text = str(self.ui.libraryPathLineEdit.currentPath or "").strip()
        if not text or self._trainingJob is not None or self._segmentJob is not None:
            return
        path = Path(text).expanduser()
        if not path.is_absolute() or not (path.is_dir() or (not path.exists() and path.parent.is_dir())):
            return
        if path == self.logic.libraryPath:
            return
        qt.QSettings().setValue(LIBRARY_SETTING, str(path))
        self.logic.libraryPath = path
        self._refreshModels()
        self._refreshCases()
        slicer.util.showStatusMessage(_("Library folder: {path}").format(path=path), 3000)

    def onAddCase(self) -> None:
        p = self._parameterNode
        segmentation = p.outputSegmentation
        tumorId = self.logic.tumorSegmentId(segmentation)
        with slicer.util.tryWithErrorDisplay(_("Could not add the case."), waitCursor=True):
            if not self.logic.editedTumorSegmentId(segmentation, p.inputVolume) and not slicer.util.confirmYesNoDisplay(
                    _("The tumor segment has not been corrected. Add it to the training set as it is?")):
                return
            caseId = self.logic.addCase(p.inputVolume, p.liverSegmentation, p.liverSegmentId, segmentation, tumorId,
                                        notes=p.caseNotes)
            self._refreshCases()
            slicer.util.showStatusMessage(_("Added case {id}").format(id=caseId), 3000)

    def onRemoveCase(self) -> None:
        items = self.ui.caseListWidget.selectedItems()
        if not items:
            return
        caseId = items[0].data(qt.Qt.UserRole)
        if not slicer.util.confirmOkCancelDisplay(_("Remove case {id} from the training set?").format(id=caseId)):
            return
        with slicer.util.tryWithErrorDisplay(_("Could not remove the case."), waitCursor=True):
            self.logic.removeCase(caseId)
            self._refreshCases()

    def onRetrain(self) -> None:
        if not self._ensureDependencies():
            return
        with slicer.util.tryWithErrorDisplay(_("Could not start training."), waitCursor=True):
            self._trainingJob = self.logic.startTraining(minutes=self._parameterNode.trainingMinutes)
            self.ui.trainingProgressBar.value = 0
            self.ui.trainingProgressBar.setVisible(True)
            self.ui.trainingStatusLabel.text = _("Starting training...")
            self._jobTimer.start()
            self._checkCanApply()

    def onCancelTraining(self) -> None:
        if self._trainingJob is not None:
            self._trainingJob.cancel()
            self.ui.trainingStatusLabel.text = _("Cancelling...")

    def _pollTraining(self) -> None:
        job = self._trainingJob
        for info in job.poll():
            percent, text = rules.describeProgress(info)
            self.ui.trainingProgressBar.value = percent
            self.ui.trainingStatusLabel.text = text
        if job.finished:
            self._trainingJob = None
            self.ui.trainingProgressBar.setVisible(False)
            self._trainingFinished(job)
            self._checkCanApply()

    def _trainingFinished(self, job) -> None:
        if job.cancelled:
            self.ui.trainingStatusLabel.text = (_("Training cancelled because the scene was closed; no model was written.")
                                                if job.sceneClosed else _("Training cancelled; no model was written."))
            return
        if job.error:  # one line (the command's own reason); its whole output under Details
            self.ui.trainingStatusLabel.text = _("Training failed: {error}").format(error=job.error)
            slicer.util.errorDisplay(_("Training failed: {error}").format(error=job.error), detailedText="\n".join(job.log))
            return
        version = job.outPath.name
        dice = (job.result.get("validation") or {}).get("dice")
        diceText = "n/a" if dice is None else f"{dice:.3f}"
        skipped = job.warnings  # e.g. a broken case it trained without
        synthesis = job.result.get("synthesis") or ""  # which synthetic data the segmenter chose (--synthesis auto)
        self.ui.trainingStatusLabel.text = _("New model {v}: validation Dice {d}").format(v=version, d=diceText) + (
            " " + _("({n} warning(s): see below)").format(n=len(skipped)) if skipped else "") + (
            "\n" + synthesis if synthesis else "")
        if skipped:
            self.ui.trainingStatusLabel.toolTip = "\n".join(skipped)
        self._refreshModels()
        warning = self.logic.modelWarning(liblogic.ModelInfo.from_folder(job.outPath))
        caution = ("\n\n" + _("Caution: it is {warning}.").format(warning=warning)) if warning else ""
        caution += ("\n\n" + _("Warnings:") + "\n" + "\n".join(skipped)) if skipped else ""
        caution += ("\n\n" + synthesis) if synthesis else ""
        if slicer.util.confirmYesNoDisplay(
                _("Training finished: model {v}, validation Dice {d}.{caution}\n\nUse it from now on? "
                  "(Earlier versions stay in the model list.)").format(v=version, d=diceText, caution=caution)):
            self.logic.setActiveModel(version)
            self._refreshModels()

    def _ensureDependencies(self) -> bool:
        """PyTorch (and friends) on first use: ask once, stating the size; never at import time."""
        missing = [name for name in ("torch", "scipy", "SimpleITK") if importlib.util.find_spec(name) is None]
        if not missing:
            old = installedTorchVersion()
            if old is not None and old < TORCH_MINIMUM:
                slicer.util.warningDisplay(_(
                    "PyTorch {have} is installed; LiverTumorSeg needs {need} or later. Update it in the "
                    "PyTorch Utils module (or uninstall it there and let LiverTumorSeg install it), "
                    "then restart Slicer.").format(have=".".join(map(str, old)), need=".".join(map(str, TORCH_MINIMUM))))
                return False
            return True
        if self._dependenciesDeclined or not slicer.util.confirmOkCancelDisplay(
                _("LiverTumorSeg needs these Python packages: {names}.\nPyTorch is {size}.\n\nInstall them now?").format(
                    names=", ".join(missing), size=TORCH_SIZE_TEXT)):
            self._dependenciesDeclined = True
            slicer.util.warningDisplay(_("LiverTumorSeg cannot run without {names}.").format(names=", ".join(missing)))
            return False
        with slicer.util.tryWithErrorDisplay(_("Installing the Python packages failed."), waitCursor=True):
            if "torch" in missing:
                installTorch()
            others = [name for name in missing if name != "torch"]
            if others:
                slicer.util.pip_install(" ".join(others))
        return all(importlib.util.find_spec(name) is not None for name in missing)


def installedTorchVersion():
    """(major, minor) of the installed torch without importing it; None when unknown."""
    try:
        text = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None
    try:
        return tuple(int(part) for part in text.split("+")[0].split(".")[:2])
    except ValueError:
        return None


def installTorch() -> None:
    """PyTorch through the PyTorch extension's installer (the right build for the GPU; the
    extension is a declared dependency), else pip for a developer build without it."""
    requirement = ">=" + ".".join(map(str, TORCH_MINIMUM))
    try:
        import PyTorchUtils
    except ImportError:
        slicer.util.pip_install("torch" + requirement)
        return
    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False, torchVersionRequirement=requirement)
    if torch is None:
        raise RuntimeError(_("PyTorch was not installed."))


#
# LiverTumorSegLogic
#


class LiverTumorSegLogic(ScriptedLoadableModuleLogic, liblogic.LiverTumorSegLogic):
    """The Lib Logic (MRML only, see LiverTumorSegLib/slicer/logic.py) plus Slicer's parameter node and settings."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)  # cooperative: also runs the Lib Logic's __init__
        self.libraryPath = libraryFolderSetting()

    def getParameterNode(self):
        return LiverTumorSegParameterNode(super().getParameterNode())


#
# LiverTumorSegTest
#


class LiverTumorSegTest(ScriptedLoadableModuleTest):
    """The whole workflow inside Slicer on a generated phantom: segment, re-threshold, add the case,
    retrain in the background, activate and roll back, and the widget's buttons."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        """Reload and Test calls this without a unittest runner (ScriptedLoadableModule.runTest),
        so a skip would show as a failure there: say why and return instead."""
        self.setUp()
        if importlib.util.find_spec("torch") is None:
            self.delayDisplay("Test skipped: PyTorch is not installed (the module offers to install it on first use)")
            return
        self.test_LiverTumorSegWorkflow()

    def test_LiverTumorSegWorkflow(self):
        if importlib.util.find_spec("torch") is None:
            self.skipTest("PyTorch is not installed (the module offers to install it on first use)")
        import tempfile

        import numpy as np

        from LiverTumorSegLib.storage import images
        from LiverTumorSegLib.slicer import mrml
        from LiverTumorSegLib.data.phantom import PhantomSettings, make_phantom

        self.delayDisplay("Making a phantom CT with known tumors")
        case = make_phantom(3, PhantomSettings.small())
        scene = slicer.mrmlScene
        ct = mrml.add_volume_node(scene, case.image, "Phantom CT")
        liverSegmentation = mrml.new_segmentation_node(scene, ct, "Phantom liver")
        liverId = mrml.write_segment(liverSegmentation, case.labels.array > 0, ct, name="Liver",
                                     color=images.LIVER_SEGMENT.color, terminology=images.LIVER_SEGMENT.terminology)
        slicer.util.setSliceViewerLayers(background=ct, fit=True)

        logic = LiverTumorSegLogic()
        logic.libraryPath = Path(tempfile.mkdtemp(prefix="LiverTumorSegTest-")) / "library"
        if not logic.listModels():
            self.delayDisplay("No shipped model: training a tiny one")
            from LiverTumorSegLib.storage.modelstore import save_model
            from LiverTumorSegLib.training.train import TrainSettings, train_model

            tiny = train_model([("phantom", case.image, case.labels)], TrainSettings(minutes=0.5, max_steps=20, patch_size=32))
            save_model(tiny, logic.library.new_version_path())
            logic.setActiveModel(logic.listModels()[-1].version)
        firstVersion = logic.activeModelVersion()

        self.delayDisplay("Segment")
        segmentation, table = logic.segment(ct, liverSegmentation, liverId, showProbability=True)
        tumorId = logic.tumorSegmentId(segmentation)
        self.assertIsNotNone(tumorId)
        self.assertEqual(segmentation.GetSegmentation().GetSegment(tumorId).GetName(), "Liver tumor")
        header, rows = mrml.table_rows(table)
        self.assertEqual(header[0], "Lesion")
        self.assertIsNotNone(logic.probabilityNode(segmentation))
        if rows:
            ras = logic.jumpToLesion(table, 0)
            self.assertEqual(len(ras), 3)

        self.delayDisplay("Re-threshold without the network")
        low = mrml.segment_to_mask(segmentation, tumorId, ct).sum()
        logic.rethreshold(segmentation, 0.95)
        self.assertLessEqual(mrml.segment_to_mask(segmentation, tumorId, ct).sum(), low)

        self.delayDisplay("Correct (here: paint the true tumors) and add the case")
        slicer.util.updateSegmentBinaryLabelmapFromArray(
            (case.labels.array == 2).astype(np.uint8), segmentation, tumorId, ct)
        self.assertEqual(logic.editedTumorSegmentId(segmentation), tumorId)
        caseId = logic.addCase(ct, liverSegmentation, liverId, segmentation, tumorId, notes="self-test")
        self.assertIn(caseId, [c.case_id for c in logic.listCases()])
        # Segmenting again into the same node keeps the edited segment and adds a new one.
        logic.segment(ct, liverSegmentation, liverId, outputSegmentationNode=segmentation)
        self.assertNotEqual(logic.tumorSegmentId(segmentation), tumorId)
        self.assertIsNotNone(segmentation.GetSegmentation().GetSegment(tumorId))

        self.delayDisplay("Retrain in the background (tiny budget)")
        job = logic.startTraining(minutes=0.5, maxSteps=5)
        deadline = time.time() + 600
        while not job.finished and time.time() < deadline:
            job.poll()
            slicer.app.processEvents()
            time.sleep(0.1)
        self.assertTrue(job.finished)
        self.assertIsNone(job.error, job.error)
        newVersion = job.outPath.name
        self.assertIn(newVersion, [m.version for m in logic.listModels()])
        logic.setActiveModel(newVersion)
        self.assertEqual(logic.activeModelVersion(), newVersion)
        logic.setActiveModel(firstVersion)  # rollback
        self.assertEqual(logic.activeModelVersion(), firstVersion)

        self.delayDisplay("The widget: Segment runs in the background")
        slicer.util.selectModule("LiverTumorSeg")
        widget = slicer.modules.LiverTumorSegWidget
        userLibrary = widget.logic.libraryPath
        widget.logic.libraryPath = logic.libraryPath  # not through the path field: keep the user's setting
        try:
            widget._refreshModels()
            widget._refreshCases()
            parameters = widget.logic.getParameterNode()
            parameters.inputVolume = ct
            parameters.liverSource = rules.LIVER_SEGMENT
            parameters.liverSegmentation = liverSegmentation
            parameters.liverSegmentId = liverId
            parameters.outputSegmentation = None
            slicer.app.processEvents()
            self.assertTrue(widget.ui.segmentButton.enabled, widget.ui.segmentButton.toolTip)
            self.assertEqual(widget.ui.caseListWidget.count, 1)
            widget.ui.segmentButton.click()
            job = widget._segmentJob
            self.assertIsNotNone(job)
            # While it runs, what must not run meanwhile is disabled, and says why.
            self.assertFalse(widget.ui.segmentButton.enabled)
            self.assertIn("segmentation is running", widget.ui.segmentButton.toolTip)
            self.assertFalse(widget.ui.retrainButton.enabled)
            self.assertTrue(widget.ui.cancelSegmentButton.enabled)
            self.assertEqual(widget.ui.segmentProgressBar.maximum, 100)  # a real progress, not a busy bar
            barTexts = set()
            deadline = time.time() + 600
            while widget._segmentJob is not None and time.time() < deadline:
                slicer.app.processEvents()  # the GUI stays live: the QTimer polls the job
                barTexts.add(widget.ui.segmentProgressBar.format)
                time.sleep(0.05)
            self.assertIsNone(widget._segmentJob)
            self.assertEqual(job.result["stage"], "done", job.log)  # its progress reports arrived, up to the end
            self.assertTrue(barTexts - {"%p%", _("Starting...")}, barTexts)  # and the bar showed a stage
            self.assertIsNotNone(parameters.outputSegmentation)
            self.assertTrue(widget.ui.segmentButton.enabled, widget.ui.segmentButton.toolTip)
            self.assertTrue(widget.ui.addCaseButton.enabled, widget.ui.addCaseButton.toolTip)
            self.assertTrue(np.isfinite(parameters.threshold))
        finally:
            widget.logic.libraryPath = userLibrary  # the live widget goes back to the user's library
            widget._refreshModels()
            widget._refreshCases()
        self.delayDisplay("Test passed")
