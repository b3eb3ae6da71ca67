"""Where Segment's liver comes from: the bundled network (Automatic), a segment the user picks, or
the TotalSegmentator extension's liver when that extension is installed.

A mixin of LiverTumorSegLogic (it uses the Logic's `scene`, `_checkOutput` and `_writeLiverSegment`).
MRML only; `slicer` is imported inside functions, so this runs under slicer-core too, where
TotalSegmentator is never installed. Running TotalSegmentator itself happens only inside the
Slicer application (`runTotalSegmentator`); everything after it (`takeLiver`) is plain MRML and
tested on a real scene.

TotalSegmentator facts below were read from lassoan/SlicerTotalSegmentator,
TotalSegmentator/TotalSegmentator.py (commit 6a82370, May 2026, and a40fc4d^ for the older API):
`TotalSegmentatorLogic.readSegmentation` / `readSegmentationFolder` give each structure the
segment ID of its TotalSegmentator class name ("liver"); `setTerminology` tags it with
SCT 10200004 "Liver" (totalsegmentator_snomed_mapping.csv) and, with `useStandardSegmentNames`
(the default), renames it to the terminology's label ("Liver").
"""

from __future__ import annotations

from . import mrml, rules
from ..errors import InputError

# TotalSegmentator's class name for the liver: the ID of its liver segment.
TOTALSEGMENTATOR_LIVER_ID = "liver"
# The Slicer module's name as `slicer.modules` holds it (lower-cased module name: Slicer's
# Base/Python/slicer/__init__.py, "modules" attribute documentation, 5.10 and main).
TOTALSEGMENTATOR_MODULE = "totalsegmentator"


def totalSegmentatorInstalled() -> bool:
    """True inside a Slicer application that has loaded the TotalSegmentator module."""
    try:
        import slicer
    except ImportError:
        return False
    return hasattr(getattr(slicer, "modules", None), TOTALSEGMENTATOR_MODULE)


def totalSegmentatorPackagesInstalled() -> bool:
    """True when TotalSegmentator's own Python package (what its setupPythonRequirements installs,
    from TotalSegmentator.py's totalSegmentatorPythonPackageDownloadUrl) can be imported."""
    import importlib.util

    return importlib.util.find_spec("totalsegmentator") is not None


def liverSegmentIdOf(segmentationNode) -> str | None:
    """The liver segment of a segmentation shaped like TotalSegmentator's output (or any other):
    the segment whose ID is "liver", else the first one whose terminology type is SCT 10200004
    (Liver), else the first one named "liver" (any case). Never "liver_vessels", "Liver tumor"
    or a Couinaud segment: their types and names differ. None when there is none."""
    from ..storage.segmentations import LIVER_CODE

    segmentation = segmentationNode.GetSegmentation()
    if segmentation.GetSegment(TOTALSEGMENTATOR_LIVER_ID) is not None:
        return TOTALSEGMENTATOR_LIVER_ID
    ids = mrml.segment_ids(segmentationNode)
    for segmentId in ids:
        parts = mrml.terminology(segmentation.GetSegment(segmentId)).split("~")
        type_code = parts[2].split("^") if len(parts) > 2 else []
        if type_code[:2] == list(LIVER_CODE[:2]):
            return segmentId
    for segmentId in ids:
        if segmentation.GetSegment(segmentId).GetName().strip().lower() == "liver":
            return segmentId
    return None


def runTotalSegmentator(ctNode, scene, log=None, cpu=False, confirmInstall=None):
    """TotalSegmentator's "total" task (fast, 3 mm) on the CT, into a new segmentation node;
    blocks until it ends (minutes on a CPU). Inside 3D Slicer with the TotalSegmentator extension only.

    Checked in TotalSegmentator.py (see the module docstring): `TotalSegmentatorLogic()` needs no
    widget; `setupPythonRequirements()` installs TotalSegmentator's own Python packages on first
    use (its Apply button calls it every time) and raises `InstallError` with `restartRequired`;
    `process(inputVolume, outputSegmentation, quality=None, cpu=False, task=None, subset=None,
    interactive=False, ...)` blocks (launchConsoleProcess + logProcessOutput) and raises
    CalledProcessError when TotalSegmentator fails. Its third argument was the `fast` flag before
    a40fc4d (Feb 2026) and is `quality` since, where True still means "fast": so True,
    positionally. Fast mode exists only for task "total" (getSupportedQualityModesForTask; before:
    isFastModeSupportedForTask), so the whole task runs rather than subset=["liver"], which
    without a task falls back to full resolution (5-50 minutes on a CPU, its own warning says).
    `logCallback` receives its log lines (`log`: one text argument).
    `confirmInstall()`: asked (True to go on) before TotalSegmentator's Python packages are
    installed, when they are not there yet; None installs without asking.
    """
    if not totalSegmentatorInstalled():
        raise InputError("the TotalSegmentator extension is not installed; install it in the Extensions Manager "
                         "(and restart Slicer), or choose Automatic as the liver source")
    import TotalSegmentator  # the extension's module file, importable once Slicer has loaded it

    tsLogic = TotalSegmentator.TotalSegmentatorLogic()
    tsLogic.logCallback = log
    if confirmInstall is not None and not totalSegmentatorPackagesInstalled() and not confirmInstall():
        raise InputError("TotalSegmentator's Python packages are not installed; install them (the TotalSegmentator "
                         "module's Apply does it too), or choose Automatic as the liver source")
    try:
        tsLogic.setupPythonRequirements()
    except Exception as error:
        if getattr(error, "restartRequired", False):
            raise InputError("TotalSegmentator installed its Python packages and needs Slicer restarted; "
                             "restart Slicer, then segment again") from error
        raise InputError(f"TotalSegmentator could not install its Python packages ({error}); open the "
                         "TotalSegmentator module and press Apply once to set it up, or choose Automatic") from error
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{ctNode.GetName()} TotalSegmentator")
    try:
        tsLogic.process(ctNode, node, True, cpu=cpu, task="total")
    except Exception as error:
        scene.RemoveNode(node)
        reason = str(error).splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"TotalSegmentator failed ({reason}); its log is in the Python console. Try the "
                         "TotalSegmentator module on this CT, or choose Automatic") from error
    return node


class LiverSources:
    """The Logic's liver sources: which the panel may offer, and a TotalSegmentator liver as the
    editable "Liver" segment Segment searches and Add case stores."""

    @staticmethod
    def liverSources() -> list[str]:
        """The liver sources to offer here (rules.LIVER_*): TotalSegmentator only when installed."""
        return rules.liverSources(totalSegmentatorInstalled())

    def takeLiver(self, sourceSegmentationNode, ctNode, outputSegmentationNode=None):
        """Copy the liver of a TotalSegmentator-shaped segmentation (`liverSegmentIdOf`) into the
        output's "Liver" segment (a new "<CT> liver tumor" node when None), the segment the
        automatic liver gets: standard name, colour and terminology, replaced by a later
        take only while unedited. Returns (segmentationNode, liverSegmentId), the liver input for
        `segment`/`startSegment` and `addCase`. InputError when the source has no liver, or an empty one."""
        if sourceSegmentationNode is None:
            raise InputError("no segmentation to take the liver from")
        segmentId = liverSegmentIdOf(sourceSegmentationNode)
        name = sourceSegmentationNode.GetName()
        if segmentId is None:
            raise InputError(f"'{name}' has no liver segment (none with ID 'liver', Liver terminology or the "
                             "name Liver); choose Automatic, or draw the liver and choose it as the liver segment")
        mask = mrml.segment_to_mask(sourceSegmentationNode, segmentId, ctNode)
        if not mask.any():
            raise InputError(f"the liver segment of '{name}' is empty on this CT; choose Automatic, or draw the "
                             "liver and choose it as the liver segment")
        self._checkOutput(ctNode, outputSegmentationNode)
        node = outputSegmentationNode
        if node is None:
            node = mrml.new_segmentation_node(self.scene, ctNode, f"{ctNode.GetName()} liver tumor")
        node.SetNodeReferenceID(mrml.CT_ROLE, ctNode.GetID())
        return node, self._writeLiverSegment(node, mask, ctNode, replaceEdited=False)

    def liverFromTotalSegmentator(self, ctNode, outputSegmentationNode=None, log=None, cpu=False, confirmInstall=None):
        """Run TotalSegmentator on the CT (blocks; inside Slicer only) and `takeLiver` from its
        result, which is then removed from the scene. Returns (segmentationNode, liverSegmentId)."""
        if ctNode is None:
            raise InputError("no CT volume selected; choose the CT to segment")
        self._checkOutput(ctNode, outputSegmentationNode)
        result = runTotalSegmentator(ctNode, self.scene, log=log, cpu=cpu, confirmInstall=confirmInstall)
        try:
            return self.takeLiver(result, ctNode, outputSegmentationNode)
        except InputError:
            raise InputError("TotalSegmentator found no liver in this CT; choose Automatic, or draw the liver "
                             "and choose it as the liver segment") from None
        finally:
            self.scene.RemoveNode(result)
