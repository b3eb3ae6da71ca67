"""LiverTumorSeg: segment liver tumors in CT, correct them, add the case, retrain.

The Widget binds the parameter node to the .ui, starts jobs and shows results; everything it
does is a call into LiverTumorSegLib.logic (scriptable without the GUI).
"""

import importlib.util
import logging
import time
from pathlib import Path
from typing import Annotated

import qt
import vtk

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin
from slicer import vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode

from LiverTumorSegLib import logic as liblogic

LIBRARY_SETTING = "LiverTumorSeg/LibraryFolder"
TRAINING_POLL_MS = 500
# Download sizes users are told before anything is installed.
TORCH_SIZE_TEXT = "about 200 MB for the CPU version, 2-3 GB with NVIDIA GPU support"


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
Segments liver tumors in a CT inside a liver segment (or ROI) with MHP-Net, shows a lesion table,
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
    inputVolume - CT to segment. liverSegmentation/liverSegmentId or liverRoi - where to look.
    outputSegmentation - where results go (None: a new node). threshold - the decision threshold
    (the slider re-thresholds the kept probability map). trainingMinutes - Retrain time budget.
    """

    inputVolume: vtkMRMLScalarVolumeNode
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
        self._job = None
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
        self._jobTimer.setInterval(TRAINING_POLL_MS)
        self._jobTimer.connect("timeout()", self._pollTraining)
        self.ui.trainingProgressBar.setVisible(False)
        self.ui.libraryPathLineEdit.currentPath = str(self.logic.libraryPath)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.liverSegmentSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onLiverSegmentChanged)
        self.ui.liverSegmentSelector.connect("currentSegmentChanged(QString)", self.onLiverSegmentChanged)
        self.ui.modelSelector.connect("activated(int)", self.onModelChosen)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegment)
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
        if self._job is not None:
            self._job.cancel()  # never leave a training process behind
        self._jobTimer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    # ---- GUI state -------------------------------------------------------------------------
    def _checkCanApply(self, caller=None, event=None) -> None:
        """Enable each action only when its inputs are there; the tooltip says what is missing."""
        p = self._parameterNode
        self._syncLiverSelector()
        hasLiverSegment = bool(p and p.liverSegmentation and p.liverSegmentId)
        output = p.outputSegmentation if p else None
        tumorId = self.logic.tumorSegmentId(output)

        missing = []
        if not (p and p.inputVolume):
            missing.append(_("choose a CT volume"))
        if not (hasLiverSegment or (p and p.liverRoi)):
            missing.append(_("choose the liver segment or an ROI around the liver"))
        if not self._hasModel:
            missing.append(_("there is no model yet: add corrected cases and Retrain"))
        self._enable(self.ui.segmentButton, not missing, _("Segment liver tumors into the output segmentation"), missing)

        self._enable(self.ui.correctButton, bool(tumorId), _("Open the Segment Editor on the result"),
                     [_("segment first")])
        missing = []
        if not (p and p.inputVolume):
            missing.append(_("choose a CT volume"))
        if not hasLiverSegment:
            missing.append(_("choose the liver as a segment (an ROI box is not a liver outline)"))
        if not tumorId:
            missing.append(_("segment (and correct) the tumors first"))
        self._enable(self.ui.addCaseButton, not missing, _("Save CT, liver and tumor segment as a training case"), missing)
        self._enable(self.ui.removeCaseButton, bool(self.ui.caseListWidget.selectedItems()),
                     _("Remove the selected case"), [_("select a case")])

        training = self._job is not None
        missing = [_("training is running")] if training else []
        if self._caseCount == 0:
            missing.append(_("add at least one case"))
        self._enable(self.ui.retrainButton, not missing, _("Fine-tune the active model on all cases"), missing)
        self.ui.cancelTrainingButton.enabled = training
        self.ui.thresholdSliderWidget.enabled = self.logic.probabilityNode(output) is not None
        table = self.logic.lesionTableNode(output)
        if self.ui.lesionTableView.mrmlTableNode() != table:
            self.ui.lesionTableView.setMRMLTableNode(table)

    @staticmethod
    def _enable(button, enabled: bool, tip: str, missing: list) -> None:
        button.enabled = enabled
        button.toolTip = tip if enabled else _("To enable: ") + "; ".join(missing)

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
            self.ui.modelSelector.addItem(info.label + (_(" [shipped]") if info.read_only else ""), info.version)
            if info.version == active:
                self.ui.modelSelector.setCurrentIndex(self.ui.modelSelector.count - 1)
        self._hasModel = bool(models)
        if not models:
            self.ui.modelSelector.addItem(_("No model yet: add corrected cases and Retrain"), "")
        self._checkCanApply()

    def _refreshCases(self) -> None:
        self.ui.caseListWidget.clear()
        cases = self.logic.listCases()
        for case in cases:
            text = _("{id}: {n} tumor(s), {ml:.1f} mL").format(id=case.case_id, n=case.tumor_count, ml=case.tumor_volume_ml)
            item = qt.QListWidgetItem(text + (f" - {case.notes}" if case.notes else ""))
            item.setData(qt.Qt.UserRole, case.case_id)
            item.setToolTip(f"{case.source}\n{case.created}")
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
        if not self._ensureDependencies():
            return
        p = self._parameterNode
        replace = False
        if p.outputSegmentation is not None and self.logic.editedTumorSegmentId(p.outputSegmentation, p.inputVolume):
            replace = slicer.util.confirmYesNoDisplay(
                _("The tumor segment in '{name}' was edited. Replace your edits with the new result?\n\n"
                  "No keeps the edited segment and adds the new result as another segment.").format(
                    name=p.outputSegmentation.GetName()))
        with slicer.util.tryWithErrorDisplay(_("Segmentation failed."), waitCursor=True):
            segmentation, _table = self.logic.segment(
                p.inputVolume, p.liverSegmentation, p.liverSegmentId or None, p.liverRoi,
                outputSegmentationNode=p.outputSegmentation, replaceEdited=replace,
                showProbability=p.showProbability, progress=self._showProgress)
            self._updatingGui = True  # the threshold below comes from the model: no re-threshold
            try:
                with slicer.util.NodeModify(p.parameterNode):
                    p.outputSegmentation = segmentation
                    p.threshold = float(segmentation.GetAttribute(liblogic.THRESHOLD_ATTRIBUTE))
            finally:
                self._updatingGui = False
            self._checkCanApply()
            slicer.util.showStatusMessage(_("Segmentation done"), 3000)

    def _showProgress(self, info: dict) -> None:
        """Status bar text during Segment; processEvents keeps the window painted."""
        step, total = info.get("step"), info.get("total")
        text = f"{info.get('stage', '')} {step}/{total}" if step is not None and total else str(info.get("stage", ""))
        slicer.util.showStatusMessage(_("Segmenting: ") + text)
        slicer.app.processEvents()

    def onThresholdChanged(self, value: float) -> None:
        p = self._parameterNode
        if self._updatingGui or not p or self.logic.probabilityNode(p.outputSegmentation) is None:
            return
        current = p.outputSegmentation.GetAttribute(liblogic.THRESHOLD_ATTRIBUTE)
        if current is not None and abs(float(current) - value) < 1e-6:
            return  # e.g. the GUI being filled from the parameter node
        if self.logic.editedTumorSegmentId(p.outputSegmentation) and not slicer.util.confirmYesNoDisplay(
                _("The tumor segment was edited. Re-thresholding replaces your edits. Continue?")):
            return
        with slicer.util.tryWithErrorDisplay(_("Re-thresholding failed."), waitCursor=True):
            self.logic.rethreshold(p.outputSegmentation, value, replaceEdited=True)

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
        if not path or Path(path) == self.logic.libraryPath:
            return
        qt.QSettings().setValue(LIBRARY_SETTING, path)
        self.logic.libraryPath = Path(path)
        self._refreshModels()
        self._refreshCases()

    def onAddCase(self) -> None:
        p = self._parameterNode
        segmentation = p.outputSegmentation
        tumorId = self.logic.tumorSegmentId(segmentation)
        if not self.logic.editedTumorSegmentId(segmentation, p.inputVolume) and not slicer.util.confirmYesNoDisplay(
                _("The tumor segment has not been corrected. Add it to the training set as it is?")):
            return
        with slicer.util.tryWithErrorDisplay(_("Could not add the case."), waitCursor=True):
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
            self._job = self.logic.startTraining(minutes=self._parameterNode.trainingMinutes)
            self.ui.trainingProgressBar.value = 0
            self.ui.trainingProgressBar.setVisible(True)
            self.ui.trainingStatusLabel.text = _("Starting training...")
            self._jobTimer.start()
            self._checkCanApply()

    def onCancelTraining(self) -> None:
        if self._job is not None:
            self._job.cancel()
            self.ui.trainingStatusLabel.text = _("Cancelling...")

    def _pollTraining(self) -> None:
        job = self._job
        if job is None:
            self._jobTimer.stop()
            return
        for info in job.poll():
            percent, text = liblogic.describeProgress(info)
            self.ui.trainingProgressBar.value = percent
            self.ui.trainingStatusLabel.text = text
        if job.finished:
            self._jobTimer.stop()
            self._job = None
            self.ui.trainingProgressBar.setVisible(False)
            self._trainingFinished(job)
            self._checkCanApply()

    def _trainingFinished(self, job) -> None:
        if job.cancelled:
            self.ui.trainingStatusLabel.text = _("Training cancelled; no model was written.")
            return
        if job.error:
            self.ui.trainingStatusLabel.text = _("Training failed.")
            slicer.util.errorDisplay(_("Training failed: {error}").format(error=job.error), detailedText="\n".join(job.log))
            return
        version = job.outPath.name
        dice = (job.result.get("validation") or {}).get("dice")
        diceText = "n/a" if dice is None else f"{dice:.3f}"
        self.ui.trainingStatusLabel.text = _("New model {v}: validation Dice {d}").format(v=version, d=diceText)
        self._refreshModels()
        if slicer.util.confirmYesNoDisplay(
                _("Training finished: model {v}, validation Dice {d}.\n\nUse it from now on? "
                  "(Earlier versions stay in the model list.)").format(v=version, d=diceText)):
            self.logic.setActiveModel(version)
            self._refreshModels()

    def _ensureDependencies(self) -> bool:
        """PyTorch (and friends) on first use: ask once, stating the size; never at import time."""
        missing = [name for name in ("torch", "scipy", "SimpleITK") if importlib.util.find_spec(name) is None]
        if not missing:
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


def installTorch() -> None:
    """PyTorch through the PyTorch extension's installer (right build for the GPU) when present, else pip."""
    try:
        import PyTorchUtils
    except ImportError:
        slicer.util.pip_install("torch")
        return
    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False, torchVersionRequirement=">=2.0")
    if torch is None:
        raise RuntimeError(_("PyTorch was not installed."))


#
# LiverTumorSegLogic
#


class LiverTumorSegLogic(ScriptedLoadableModuleLogic, liblogic.LiverTumorSegLogic):
    """The Lib Logic (MRML only, see LiverTumorSegLib/logic.py) plus Slicer's parameter node and settings."""

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
        self.setUp()
        self.test_LiverTumorSegWorkflow()

    def test_LiverTumorSegWorkflow(self):
        if importlib.util.find_spec("torch") is None:
            self.skipTest("PyTorch is not installed (the module offers to install it on first use)")
        import tempfile

        import numpy as np

        from LiverTumorSegLib import io as lio
        from LiverTumorSegLib import mrml
        from LiverTumorSegLib.phantom import PhantomSettings, make_phantom

        self.delayDisplay("Making a phantom CT with known tumors")
        case = make_phantom(3, PhantomSettings.small())
        scene = slicer.mrmlScene
        ct = mrml.add_volume_node(scene, case.image, "Phantom CT")
        liverSegmentation = mrml.new_segmentation_node(scene, ct, "Phantom liver")
        liverId = mrml.write_segment(liverSegmentation, case.labels.array > 0, ct, name="Liver",
                                     color=lio.LIVER_SEGMENT.color, terminology=lio.LIVER_SEGMENT.terminology)
        slicer.util.setSliceViewerLayers(background=ct, fit=True)

        logic = LiverTumorSegLogic()
        logic.libraryPath = Path(tempfile.mkdtemp(prefix="LiverTumorSegTest-")) / "library"
        if not logic.listModels():
            self.delayDisplay("No shipped model: training a tiny one")
            from LiverTumorSegLib.modelstore import save_model
            from LiverTumorSegLib.training import TrainSettings, train_model

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

        self.delayDisplay("The widget")
        slicer.util.selectModule("LiverTumorSeg")
        widget = slicer.modules.LiverTumorSegWidget
        widget.logic.libraryPath = logic.libraryPath  # not through the path field: keep the user's setting
        widget._refreshModels()
        widget._refreshCases()
        parameters = widget.logic.getParameterNode()
        parameters.inputVolume = ct
        parameters.liverSegmentation = liverSegmentation
        parameters.liverSegmentId = liverId
        parameters.outputSegmentation = None
        slicer.app.processEvents()
        self.assertTrue(widget.ui.segmentButton.enabled, widget.ui.segmentButton.toolTip)
        self.assertEqual(widget.ui.caseListWidget.count, 1)
        widget.ui.segmentButton.click()
        self.assertIsNotNone(parameters.outputSegmentation)
        self.assertTrue(widget.ui.addCaseButton.enabled, widget.ui.addCaseButton.toolTip)
        self.assertTrue(np.isfinite(parameters.threshold))
        self.delayDisplay("Test passed")
