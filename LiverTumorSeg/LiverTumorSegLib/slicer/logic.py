"""The Logic of the Slicer module: what a Slicer developer scripts against.

    logic = slicer.util.getModuleLogic("LiverTumorSeg")
    segmentation, table = logic.segment(ctNode, liverSegmentationNode, "liver")
    logic.addCase(ctNode, liverSegmentationNode, "liver", segmentation, logic.tumorSegmentId(segmentation))
    job = logic.startTraining(minutes=5)   # background process; poll() it, or logic.train() to block
    job = logic.startSegment(ctNode, liverSegmentationNode, "liver")   # Segment in the background:
    ...poll() until job.finished...; segmentation, table = logic.finishSegment(job)

MRML only, no qt: it runs inside Slicer and under `slicer-core` (tests, batch scripts). Nodes go
through `mrml.py`; the computation is the engine's. The Logic is split by what it handles:
model versions and Retrain (models.py), the result nodes (results.py), the background jobs
(jobs.py), the liver sources and TotalSegmentator's liver (liver_sources.py); this file holds Segment, the case library and the inputs. The module file mixes this
class with ScriptedLoadableModuleLogic; nothing here needs that base.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import weakref
from pathlib import Path

import numpy as np

from . import mrml
from ..errors import Cancelled, InputError
from ..protocol import segment_command
from ..storage import fsutil
from ..storage.library import CaseLibrary, ModelInfo, default_library_path  # noqa: F401 - ModelInfo: for the front ends
from ..volume import Volume
from .jobs import SegmentJob, SegmentThreadJob, backgroundThreads, childEnvironment, packageParent, pythonExecutable
from .liver_sources import LiverSources
from .models import ModelVersions
from .rules import SEGMENT_FINDING_LIVER_STAGE_SPAN
from .results import (  # noqa: F401 - THRESHOLD_ATTRIBUTE: the front ends read it here
    PROBABILITY_MAP_ATTRIBUTE, THRESHOLD_ATTRIBUTE, ResultNodes, readArray,
)


def defaultLibraryPath() -> Path:
    """Case library folder when none is configured: beside Slicer's user settings, else in the home folder."""
    try:
        import slicer

        settings_file = slicer.app.slicerUserSettingsFilePath
    except (ImportError, AttributeError):
        settings_file = None
    return default_library_path(settings_file)


def preloadEngine() -> threading.Thread:
    """Import, in a background thread, the engine modules the first Segment's result needs
    (inference, lesions, scipy: about a second). A front end calls this once it is showing, so
    neither its start nor its first Segment waits for them."""
    import importlib

    thread = threading.Thread(target=importlib.import_module, args=("..core.inference", __package__),
                              name="LiverTumorSeg preload", daemon=True)
    thread.start()
    return thread


class LiverTumorSegLogic(ModelVersions, ResultNodes, LiverSources):
    """Segment liver tumors into MRML nodes, keep the case library, retrain in the background."""

    def __init__(self, libraryPath=None, scene=None):
        super().__init__()
        self._scene = scene
        self.libraryPath = Path(libraryPath) if libraryPath else defaultLibraryPath()
        self._modelCache: dict = {}
        self._jobs: list = []  # background jobs started here, until they finish
        self._observedScenes: list = []  # (scene, observer tag) for StartCloseEvent
        self._dicomSources: dict = {}  # CT node ID -> its DICOM slices' headers (loadVolume), for a DICOM SEG

    # ---- background jobs and the scene's life --------------------------------------------
    def _track(self, job):
        """Keep a started job; the first one also makes the Logic watch its scene's closing."""
        self._jobs = [j for j in self._jobs if not j.finished] + [job]
        try:
            scene = self.scene
        except InputError:  # training needs no scene
            return job
        if not any(observed is scene for observed, _ in self._observedScenes):
            me = weakref.ref(self)  # the scene must not keep the Logic alive (nor call a dead one)

            def onStartClose(caller, event):
                logic = me()
                if logic is not None:
                    logic._onSceneStartClose()

            tag = scene.AddObserver(scene.StartCloseEvent, onStartClose)
            self._observedScenes.append((scene, tag))
        return job

    def _onSceneStartClose(self, caller=None, event=None) -> None:
        """The scene is being closed: running jobs are cancelled (closing the scene ends the
        session's work). Segment's CT and output are going away (finishSegment then
        raises Cancelled and removes its scratch folder); Retrain writes no model. Each job's
        `sceneClosed` says why, for the panel."""
        for job in getattr(self, "_jobs", []):
            if not job.finished:
                job.sceneClosed = True
                job.cancel()

    def runningJobs(self) -> list:
        return [job for job in self._jobs if not job.finished]

    def stopJobs(self, timeout: float = 5.0) -> None:
        """Stop every background job and wait for it (the application is closing): nothing is
        left running, no scratch folder is left behind, and no half result is written."""
        for job in self._jobs:
            job.stop(timeout)
        self._jobs = []
        for scene, tag in self._observedScenes:
            scene.RemoveObserver(tag)
        self._observedScenes = []

    # ---- context -------------------------------------------------------------------------
    @property
    def scene(self):
        """The scene given at construction, else Slicer's (inside the application)."""
        if self._scene is not None:
            return self._scene
        import slicer

        scene = getattr(slicer, "mrmlScene", None)
        if scene is None:
            raise InputError("no MRML scene: pass scene= to LiverTumorSegLogic outside 3D Slicer")
        return scene

    @property
    def library(self) -> CaseLibrary:
        return CaseLibrary(self.libraryPath)

    # ---- segment -------------------------------------------------------------------------
    def liverMask(self, ctNode, liverSegmentationNode=None, liverSegmentId=None, roiNode=None):
        """Liver region on the CT grid: the segment if given, else the ROI box, else None (whole CT)."""
        if liverSegmentationNode is not None and liverSegmentId:
            mask = mrml.segment_to_mask(liverSegmentationNode, liverSegmentId, ctNode)
            if not mask.any():
                raise InputError(
                    f"the liver segment '{liverSegmentId}' is empty on this CT; draw the liver or choose another segment"
                )
            return mask
        if roiNode is not None:
            return mrml.roi_to_mask(roiNode, ctNode)
        return None

    @staticmethod
    def findLiver(image, progress=None) -> np.ndarray:
        """The liver found by the bundled liver network (bool, the CT's grid), checked; InputError
        naming the problem when no plausible liver is found (then the user chooses a liver segment)."""
        from ..core.liver_checks import find_plausible_liver
        from ..storage.memory import liver_memory_problem
        from ..storage.modelstore import shipped_liver_network

        problem = liver_memory_problem(image.shape, image.spacing_zyx, "choose the liver segment")
        if problem:
            raise InputError(problem)
        try:
            check = find_plausible_liver(image, shipped_liver_network(), progress=progress)
        except InputError as error:
            raise InputError(str(error).replace("give a liver mask with --liver", "choose a liver segment")) from None
        return check.mask.array > 0

    def defaultInputVolume(self):
        """The first plain scalar volume of the scene that is not one of our probability maps.

        vtkMRMLScene.GetFirstNodeByClass matches with IsA, so it would also return labelmaps (and
        any other subclass) and the "... probability" volumes Segment adds; None when no CT.
        """
        scene = self.scene
        kept = set()
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")):
            node = scene.GetNthNodeByClass(i, "vtkMRMLSegmentationNode")
            if node.GetNodeReferenceID(mrml.PROBABILITY_ROLE):
                kept.add(node.GetNodeReferenceID(mrml.PROBABILITY_ROLE))
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
            node = scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
            if (node.GetClassName() == "vtkMRMLScalarVolumeNode" and node.GetID() not in kept
                    and node.GetAttribute(PROBABILITY_MAP_ATTRIBUTE) != "1"):
                return node
        return None

    def segment(
        self,
        ctNode,
        liverSegmentationNode=None,
        liverSegmentId=None,
        roiNode=None,
        model=None,
        threshold=None,
        outputSegmentationNode=None,
        replaceEdited=False,
        showProbability=False,
        progress=None,
    ):
        """Segment liver tumors in this process (blocks; `startSegment` runs it in the background);
        returns (segmentationNode, lesionTableNode).

        The result goes into a new segmentation node, or into `outputSegmentationNode`: there the
        Logic's own "Liver tumor" segment is replaced only while the user has not edited it (or
        with `replaceEdited=True`); otherwise a new segment is added. Other segments are never
        touched. The probability map is kept as a volume node (restricted to the liver region)
        for `rethreshold`; `showProbability` shows it over the CT.
        """
        from ..core.inference import segment as run_segment

        if ctNode is None:
            raise InputError("no CT volume selected; choose the CT to segment")
        self._checkOutput(ctNode, outputSegmentationNode)
        image = mrml.volume_from_node(ctNode)
        liver = self.liverMask(ctNode, liverSegmentationNode, liverSegmentId, roiNode)
        trained = self.loadModel(model)
        foundLiver = liver is None  # no liver segment and no ROI: found automatically (a "Liver" segment)
        if foundLiver:
            liver = self.findLiver(image, progress)
        self._checkMemory(image, liver, trained)  # in this process: running out would end Slicer itself
        result = run_segment(image, liver, trained, threshold=threshold, progress=progress)
        modelName = str(self.modelPath(model)) if model is None or isinstance(model, (str, os.PathLike)) else "(in memory)"
        return self._putResult(
            ctNode, liver, np.asarray(result.tumor.array) > 0, result.probability.array, result.lesions,
            result.threshold, getattr(trained, "min_lesion_mm3", 0.0), modelName,
            outputSegmentationNode, replaceEdited, showProbability, foundLiver=foundLiver,
        )

    def startSegment(
        self,
        ctNode,
        liverSegmentationNode=None,
        liverSegmentId=None,
        roiNode=None,
        model=None,
        threshold=None,
        outputSegmentationNode=None,
        replaceEdited=False,
        showProbability=False,
        threads=None,
        inProcess=False,
    ) -> SegmentJob | SegmentThreadJob:
        """`segment` in a background process (`livertumorseg segment`), so the GUI never waits.

        The CT and the liver region are written to a scratch folder here (uncompressed: fast),
        the command line segments them (one core left to Slicer), and `finishSegment(job)` puts
        its result into the scene the way `segment` does. `model` is None (active), a version
        name or a model folder. `job.poll()` returns its progress dicts (stages prepare, network,
        postprocess, done; `describeProgress(info, job.stageSpans)` for a progress bar).
        `threads`: torch threads of the job (default: all cores but one, left to the GUI).
        `inProcess`: run it on a worker thread of this process instead (SegmentThreadJob: for a
        server that keeps the engine loaded; `threads` then does not apply, the process's torch
        threads are used). The Slicer widget keeps the process: running out of memory there
        ends the child, not Slicer.
        """
        if ctNode is None:
            raise InputError("no CT volume selected; choose the CT to segment")
        if model is not None and not isinstance(model, (str, os.PathLike)):
            raise InputError("a background Segment needs a model folder or version name; use segment() for a model in memory")
        self._checkOutput(ctNode, outputSegmentationNode)
        modelFolder = self.modelPath(model)
        if not (modelFolder / "model.pt").is_file():
            raise InputError(f"no model at {modelFolder}; choose another model or Retrain")
        threshold, minLesion = self._modelThreshold(modelFolder, threshold)
        image = mrml.volume_from_node(ctNode)
        liver = self.liverMask(ctNode, liverSegmentationNode, liverSegmentId, roiNode)
        request = {
            "ct": ctNode, "output": outputSegmentationNode, "replaceEdited": bool(replaceEdited),
            "showProbability": bool(showProbability), "threshold": threshold, "minLesion": minLesion,
            "model": str(modelFolder), "region": liver is not None, "foundLiver": liver is None,
        }
        if inProcess:
            trained = self.loadModel(modelFolder)
            if liver is not None:  # else findLiver checks the liver step's memory and the liver bounds the rest
                self._checkMemory(image, liver, trained)
            job = SegmentThreadJob(image, liver, trained, threshold, request, find_liver=self.findLiver if liver is None else None)
            if liver is None:
                job.stageSpans = SEGMENT_FINDING_LIVER_STAGE_SPAN
            return self._track(job)

        import SimpleITK as sitk

        scratch = Path(tempfile.gettempdir())
        fsutil.clean_stale_temps(scratch)  # scratch folders of a Slicer that crashed or was killed
        folder = Path(tempfile.mkdtemp(prefix=fsutil.temp_prefix("LiverTumorSeg-segment"), dir=scratch))
        try:
            sitk.WriteImage(image.to_sitk(), str(folder / "image.nrrd"), False)
            if liver is not None:
                sitk.WriteImage(image.with_array(liver.astype(np.uint8)).to_sitk(), str(folder / "liver.nrrd"), False)
            command = segment_command(
                pythonExecutable(), folder / "image.nrrd", folder / "tumor.nrrd", folder / "prob.nrrd",
                modelFolder.resolve(), threshold, backgroundThreads() if threads is None else max(1, int(threads)),
                liver=folder / "liver.nrrd" if liver is not None else None,
                liver_out=folder / "liver_found.nrrd" if liver is None else None)
            job = SegmentJob(command, env=childEnvironment(), cwd=packageParent(), folder=folder, request=request)
            if liver is None:
                job.stageSpans = SEGMENT_FINDING_LIVER_STAGE_SPAN
            return self._track(job)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def finishSegment(self, job: SegmentJob | SegmentThreadJob):
        """Put a finished background Segment into the scene; returns (segmentationNode, lesionTableNode).

        Raises Cancelled when it was cancelled and InputError when it failed or when the CT was
        removed meanwhile. The job's scratch folder is removed in any case.
        """
        from ..core.inference import lesions_in_box
        from ..core.lesions import mask_box

        if not job.finished:
            raise InputError("the segmentation is still running; wait for it to finish (or cancel it)")
        try:
            if job.cancelled:
                if job.sceneClosed:
                    raise Cancelled("segmentation was cancelled because the scene was closed")
                raise Cancelled("segmentation was cancelled; the output segmentation was not changed")
            if job.error:
                raise InputError(job.error)
            request = job.request
            ctNode, output = request["ct"], request["output"]
            if ctNode.GetScene() is None:
                raise InputError("the CT was removed from the scene while it was being segmented")
            if output is not None and output.GetScene() is None:
                output = None  # the chosen output was deleted meanwhile: a new node instead
            image = mrml.volume_from_node(ctNode)
            if isinstance(job, SegmentThreadJob):
                probability, tumor, liver = job.output.probability.array, job.output.tumor.array > 0, job.liver
            else:
                probability = readArray(job.folder / "prob.nrrd").astype(np.float32, copy=False)
                tumor = readArray(job.folder / "tumor.nrrd") > 0
                liver = readArray(job.folder / "liver.nrrd") > 0 if request["region"] else None
                if request.get("foundLiver"):
                    liver = readArray(job.folder / "liver_found.nrrd") > 0
            if probability.shape != image.shape or tumor.shape != image.shape:
                raise InputError("the CT changed while it was being segmented; segment it again")
            box = mask_box(tumor)  # measured on the CT's geometry now (it may have moved meanwhile)
            lesions = lesions_in_box(tumor, image, probability, box) if box else []
            return self._putResult(
                ctNode, liver, tumor, probability, lesions, request["threshold"], request["minLesion"],
                request["model"], output, request["replaceEdited"], request["showProbability"],
                foundLiver=bool(request.get("foundLiver")),
            )
        finally:
            job.cleanup()

    @staticmethod
    def _checkMemory(image, liver, trained) -> None:
        """InputError when segmenting would not fit in the free memory (memory.py)."""
        from ..storage.memory import segment_memory_problem

        settings = getattr(trained, "feature_settings", None)
        margin, work = (settings.margin_mm, settings.spacing_mm) if settings is not None else (12.0, 2.0)
        problem = segment_memory_problem(image, liver, margin, work)
        if problem:
            raise InputError(problem.replace("give a liver mask (--liver)", "choose the liver segment"))

    def _checkOutput(self, ctNode, outputSegmentationNode) -> None:
        if outputSegmentationNode is not None and outputSegmentationNode.GetTransformNodeID() != ctNode.GetTransformNodeID():
            raise InputError(
                f"segmentation '{outputSegmentationNode.GetName()}' is under another transform than the CT; "
                "choose 'Create new segmentation' as output"
            )

    # ---- case library --------------------------------------------------------------------
    def addCase(
        self,
        ctNode,
        liverSegmentationNode,
        liverSegmentId,
        tumorSegmentationNode,
        tumorSegmentId,
        caseId=None,
        notes="",
    ) -> str:
        """Save CT + liver + (corrected) tumor mask as a new training case; returns the case id."""
        if liverSegmentationNode is None or not liverSegmentId:
            raise InputError(
                "adding a case needs the liver as a segment (an ROI box is not a liver outline); "
                "segment the liver first, e.g. with the Segment Editor or TotalSegmentator"
            )
        if tumorSegmentationNode is None or not tumorSegmentId:
            raise InputError("no tumor segment chosen; run Segment, correct the result, then add the case")
        image = mrml.volume_from_node(ctNode)
        liver = mrml.segment_to_mask(liverSegmentationNode, liverSegmentId, ctNode)
        tumor = mrml.segment_to_mask(tumorSegmentationNode, tumorSegmentId, ctNode)
        if not liver.any():
            raise InputError(f"the liver segment '{liverSegmentId}' is empty; draw the liver first")
        labels = np.zeros(image.shape, dtype=np.uint8)
        labels[liver] = 1
        labels[tumor] = 2
        return self.library.add_case(
            image, Volume(labels, image.spacing, image.origin, image.direction),
            source=f"3D Slicer: {ctNode.GetName()}", notes=notes, case_id=caseId,
        )

    def listCases(self):
        return self.library.list_cases()

    def removeCase(self, caseId: str) -> None:
        self.library.remove_case(caseId)

    # ---- files: loading inputs and writing results (Slicer has Add Data and Save; a front end
    # without them, such as the web app, loads and downloads through these) ------------------
    def loadVolume(self, path, name=None):
        """A CT file (.nrrd, .nii(.gz), .mha/.mhd) or DICOM series folder as a new volume node.

        Read by the engine's reader, so a bad file fails with the command line's own message
        (InputError: a PNG, a 2D image, a colour image, a non-uniform DICOM series...)."""
        from ..storage import images

        image = images.read_image(path, keep_integer=True)
        node = mrml.add_volume_node(self.scene, image, name or _stemOf(path))
        if Path(path).is_dir():  # a DICOM series: its headers kept, so exportResult can write a DICOM SEG
            from ..storage.dicom_seg import source_datasets

            try:
                self._dicomSources[node.GetID()] = source_datasets(path)
            except InputError:  # e.g. UIDs stripped: the CT is usable, a SEG just cannot reference it
                pass
        return node

    def dicomSource(self, ctNode):
        """The DICOM slices' headers of a CT that loadVolume read from a DICOM series (None for
        other CTs, or one whose series cannot be referenced by a SEG)."""
        return self._dicomSources.get(ctNode.GetID()) if ctNode is not None else None

    def loadLiverSegmentation(self, path, ctNode, name=None):
        """A liver mask file (any nonzero voxel is liver; LiTS labels and Slicer .seg.nrrd with a
        liver segment work as is) as a new segmentation node on the CT's grid; returns
        (segmentationNode, liverSegmentId)."""
        from ..storage import images

        mask = images.read_liver_mask(path, reference=mrml.volume_from_node(ctNode))
        node = mrml.new_segmentation_node(self.scene, ctNode, name or f"{ctNode.GetName()} liver")
        segmentId = mrml.write_segment(node, mask, ctNode, name=images.LIVER_SEGMENT.name, color=images.LIVER_SEGMENT.color,
                                       terminology=images.LIVER_SEGMENT.terminology)
        return node, segmentId

    def loadCase(self, caseId: str):
        """A library case's CT and liver (liver and tumor labels) into the scene, to segment it
        again; returns (ctNode, liverSegmentationNode, liverSegmentId)."""
        from ..storage import images

        image, labels = self.library.load_case(caseId)
        ctNode = mrml.add_volume_node(self.scene, image, f"case {caseId}")
        node = mrml.new_segmentation_node(self.scene, ctNode, f"case {caseId} liver")
        segmentId = mrml.write_segment(node, labels.array > 0, ctNode, name=images.LIVER_SEGMENT.name,
                                       color=images.LIVER_SEGMENT.color, terminology=images.LIVER_SEGMENT.terminology)
        return ctNode, node, segmentId

    def removeNodes(self, *nodes) -> None:
        """Take inputs or results out of the scene (a front end replacing its CT); a Segment
        result goes with its kept probability map and lesion table. None and removed nodes are skipped."""
        for node in nodes:
            if node is None or node.GetScene() is None:
                continue
            if node.IsA("vtkMRMLSegmentationNode"):
                for kept in (self.probabilityNode(node), self.lesionTableNode(node)):
                    if kept is not None and kept.GetScene() is not None:
                        self.scene.RemoveNode(kept)
            self.scene.RemoveNode(node)


def _stemOf(path) -> str:
    """A node name from a file or folder name: 'ct' for ct.nii.gz, ct.nrrd or a DICOM folder 'ct'."""
    name = Path(path).name
    for suffix in (".seg.nrrd", ".nii.gz", ".nrrd", ".nii", ".mha", ".mhd"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or name
    return name
