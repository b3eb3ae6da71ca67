"""A Segment result in the scene: the tumor segment, the kept probability map, the lesion table
and the attributes re-thresholding needs; re-thresholding; exporting the corrected result.

A mixin of LiverTumorSegLogic (it uses the Logic's `scene`). MRML only, through mrml.py; the
arrays are (z, y, x) on the CT's grid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import mrml
from ..errors import InputError

# Attributes the Logic sets on its output segmentation node.
TUMOR_SEGMENT_ATTRIBUTE = "LiverTumorSeg.TumorSegmentID"
THRESHOLD_ATTRIBUTE = "LiverTumorSeg.Threshold"
MIN_LESION_ATTRIBUTE = "LiverTumorSeg.MinLesionMm3"
MODEL_ATTRIBUTE = "LiverTumorSeg.Model"
# "1" when Segment ran inside a liver region: the kept map is then > 0 exactly inside it
# (PROBABILITY_FLOOR), so re-thresholding can drop liver-surface slivers the same way.
REGION_ATTRIBUTE = "LiverTumorSeg.LiverRegion"
# The segment holding the liver Segment found automatically (no liver segment or ROI given).
LIVER_SEGMENT_ATTRIBUTE = "LiverTumorSeg.LiverSegmentID"
PROBABILITY_FLOOR = 1e-6

# Set to "1" on the kept probability volume, so it is never offered as a CT to segment.
PROBABILITY_MAP_ATTRIBUTE = "LiverTumorSeg.ProbabilityMap"

# Probability overlay: Slicer's heat colour map; voxels below this probability are not drawn.
PROBABILITY_COLORS = "vtkMRMLPETProceduralColorNodePET-Heat"
PROBABILITY_SHOWN_FROM = 0.05


def readArray(path: Path) -> np.ndarray:
    """The (z, y, x) voxel array of an image file the command line wrote on the CT's own grid.
    Its uncompressed NRRD is read straight into the array (images.read_raw_nrrd: one read, no
    copy, where SimpleITK reads into its own image and copies that out: twice the memory traffic
    for a CT-sized float map), any other file through SimpleITK."""
    from ..storage.images import read_raw_nrrd

    array = read_raw_nrrd(path)
    if array is not None:
        return array
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def floorInsideLiver(probability: np.ndarray, liver: np.ndarray) -> np.ndarray:
    """A new map: `probability` raised to at least PROBABILITY_FLOOR inside the liver, 0 outside
    it (re-thresholding then knows the liver region from the map alone). Only the liver's box is
    computed; the rest of a large CT grid stays the untouched zeros of a fresh array."""
    from ..core.lesions import mask_box

    out = np.zeros(probability.shape, dtype=np.float32)
    box = mask_box(liver)
    if box is not None:
        inside = (slice(box[0], box[1]), slice(box[2], box[3]), slice(box[4], box[5]))
        np.maximum(probability[inside], np.float32(PROBABILITY_FLOOR), out=out[inside], where=liver[inside])
    return out


class ResultNodes:
    """The Logic's methods for the nodes a Segment writes and reads back."""

    def _putResult(self, ctNode, liver, tumor, probability, lesions, threshold, minLesion, modelName,
                   outputSegmentationNode, replaceEdited, showProbability, foundLiver=False):
        """Write one Segment result (arrays on the CT grid) into the scene: the tumor segment, the
        kept probability map, the lesion table, the attributes re-thresholding needs, the display;
        `foundLiver`: the liver was found automatically and gets its own "Liver" segment (replaced
        by the next Segment only while unedited), to be checked and corrected like the tumors."""
        from ..storage import images

        probability = np.asarray(probability, dtype=np.float32)
        if liver is not None:
            probability = floorInsideLiver(probability, liver)
        segmentationNode = outputSegmentationNode
        if segmentationNode is None:
            segmentationNode = mrml.new_segmentation_node(self.scene, ctNode, f"{ctNode.GetName()} liver tumor")
        self._writeTumorSegment(segmentationNode, np.asarray(tumor, dtype=bool), ctNode, replaceEdited, images.TUMOR_SEGMENT)
        if foundLiver:
            self._writeLiverSegment(segmentationNode, np.asarray(liver, dtype=bool), ctNode, replaceEdited)
        segmentationNode.SetNodeReferenceID(mrml.CT_ROLE, ctNode.GetID())
        segmentationNode.SetAttribute(THRESHOLD_ATTRIBUTE, f"{float(threshold):.6g}")
        segmentationNode.SetAttribute(MIN_LESION_ATTRIBUTE, f"{float(minLesion):.6g}")
        segmentationNode.SetAttribute(REGION_ATTRIBUTE, "0" if liver is None else "1")
        segmentationNode.SetAttribute(MODEL_ATTRIBUTE, modelName)

        probabilityNode = self._keepProbability(segmentationNode, ctNode, probability)
        tableNode = self._lesionTable(segmentationNode)
        mrml.update_lesion_table(tableNode, lesions)
        self._show(segmentationNode, probabilityNode if showProbability else None)
        return segmentationNode, tableNode

    def rethreshold(self, segmentationNode, threshold: float, replaceEdited=False):
        """Threshold the kept probability map again (no network run); returns the updated lesion table node."""
        from ..core.inference import mask_from_probability
        from ..core.lesions import lesion_table
        from ..storage import images

        if not 0.0 < float(threshold) < 1.0:
            raise InputError(f"threshold {threshold} is outside (0, 1)")
        probabilityNode = self.probabilityNode(segmentationNode)
        ctNode = segmentationNode.GetNodeReference(mrml.CT_ROLE) if segmentationNode else None
        if probabilityNode is None or ctNode is None:
            raise InputError("this segmentation has no kept probability map; run Segment first")
        segmentId = self.tumorSegmentId(segmentationNode)
        if segmentId and not replaceEdited and mrml.segment_was_edited(segmentationNode, segmentId, ctNode):
            raise InputError(
                "the tumor segment was edited since it was computed; re-thresholding would replace "
                "your edits (confirm to replace them, or segment into a new segmentation)"
            )
        ct = mrml.volume_from_node(ctNode)
        probability = mrml.volume_from_node(probabilityNode).array.astype(np.float32)
        minimum = float(segmentationNode.GetAttribute(MIN_LESION_ATTRIBUTE) or 0.0)
        region = probability > 0 if segmentationNode.GetAttribute(REGION_ATTRIBUTE) == "1" else None
        mask = np.asarray(mask_from_probability(probability, region, float(threshold), ct.spacing_zyx, minimum), dtype=bool)
        self._writeTumorSegment(segmentationNode, mask, ctNode, True, images.TUMOR_SEGMENT)
        segmentationNode.SetAttribute(THRESHOLD_ATTRIBUTE, f"{float(threshold):.6g}")
        tableNode = self._lesionTable(segmentationNode)
        mrml.update_lesion_table(tableNode, lesion_table(mask, ct, probability))
        return tableNode

    def tumorSegmentId(self, segmentationNode) -> str | None:
        """Id of the Logic's tumor segment in a segmentation node, None if it has none (any more)."""
        if segmentationNode is None:
            return None
        segmentId = segmentationNode.GetAttribute(TUMOR_SEGMENT_ATTRIBUTE)
        if segmentId and segmentationNode.GetSegmentation().GetSegment(segmentId) is not None:
            return segmentId
        return None

    def editedTumorSegmentId(self, segmentationNode, ctNode=None) -> str | None:
        """The Logic's tumor segment if the user edited it since it was computed (ask before replacing)."""
        segmentId = self.tumorSegmentId(segmentationNode)
        if segmentId is None:
            return None
        ctNode = ctNode or segmentationNode.GetNodeReference(mrml.CT_ROLE)
        if ctNode is None or mrml.segment_was_edited(segmentationNode, segmentId, ctNode):
            return segmentId
        return None

    def probabilityNode(self, segmentationNode):
        return segmentationNode.GetNodeReference(mrml.PROBABILITY_ROLE) if segmentationNode else None

    def lesionTableNode(self, segmentationNode):
        return segmentationNode.GetNodeReference(mrml.TABLE_ROLE) if segmentationNode else None

    def lesionRows(self, tableNode) -> tuple[list[str], list[list]]:
        """(column titles, rows) of a lesion table node, for a front end that draws its own table."""
        if tableNode is None:
            return [], []
        return mrml.table_rows(tableNode)

    def lesionCentroid(self, tableNode, row: int) -> tuple[float, float, float]:
        """RAS centre (mm) of the lesion in a table row."""
        header, rows = mrml.table_rows(tableNode)
        if not 0 <= row < len(rows):
            raise InputError(f"no lesion in row {row}")
        columns = [header.index(name) for name in ("Centroid R", "Centroid A", "Centroid S")]
        return tuple(float(rows[row][c]) for c in columns)

    def jumpToLesion(self, tableNode, row: int) -> tuple[float, float, float]:
        """Centre all slice views on the lesion of a table row; returns its RAS position."""
        ras = self.lesionCentroid(tableNode, row)
        mrml.jump_slices_to(self.scene, ras)
        return ras

    def _writeTumorSegment(self, segmentationNode, mask, ctNode, replaceEdited, info) -> str:
        segmentId = self.tumorSegmentId(segmentationNode)
        if segmentId and (replaceEdited or not mrml.segment_was_edited(segmentationNode, segmentId, ctNode)):
            return mrml.write_segment(segmentationNode, mask, ctNode, segment_id=segmentId)
        segmentId = mrml.write_segment(
            segmentationNode, mask, ctNode, name=self._freeSegmentName(segmentationNode, info.name),
            color=info.color, terminology=info.terminology,
        )
        segmentationNode.SetAttribute(TUMOR_SEGMENT_ATTRIBUTE, segmentId)
        return segmentId

    def foundLiverSegmentId(self, segmentationNode) -> str | None:
        """The "Liver" segment a Segment added after finding the liver itself; None when it has none."""
        if segmentationNode is None:
            return None
        segmentId = segmentationNode.GetAttribute(LIVER_SEGMENT_ATTRIBUTE)
        return segmentId if segmentId and segmentationNode.GetSegmentation().GetSegment(segmentId) is not None else None

    def _writeLiverSegment(self, segmentationNode, mask, ctNode, replaceEdited) -> str:
        from ..storage import images

        segmentId = segmentationNode.GetAttribute(LIVER_SEGMENT_ATTRIBUTE)
        if segmentId and segmentationNode.GetSegmentation().GetSegment(segmentId) is not None and (
                replaceEdited or not mrml.segment_was_edited(segmentationNode, segmentId, ctNode)):
            return mrml.write_segment(segmentationNode, mask, ctNode, segment_id=segmentId)
        info = images.LIVER_SEGMENT
        segmentId = mrml.write_segment(segmentationNode, mask, ctNode, name=self._freeSegmentName(segmentationNode, info.name),
                                       color=info.color, terminology=info.terminology)
        segmentationNode.SetAttribute(LIVER_SEGMENT_ATTRIBUTE, segmentId)
        return segmentId

    @staticmethod
    def _freeSegmentName(segmentationNode, name: str) -> str:
        segmentation = segmentationNode.GetSegmentation()
        taken = {segmentation.GetSegment(s).GetName() for s in mrml.segment_ids(segmentationNode)}
        candidate, n = name, 1
        while candidate in taken:
            n += 1
            candidate = f"{name} {n}"
        return candidate

    def _keepProbability(self, segmentationNode, ctNode, probability):
        node = self.probabilityNode(segmentationNode)
        if node is None:
            node = self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"{segmentationNode.GetName()} probability")
            node.SetAttribute(PROBABILITY_MAP_ATTRIBUTE, "1")
            segmentationNode.SetNodeReferenceID(mrml.PROBABILITY_ROLE, node.GetID())
        if node.GetDisplayNode() is None:
            # Before the voxels: a new display node measures the window / level of what the volume
            # holds, a pass over the whole CT grid (0.7 s for 512 x 512 x 200) for a range we fix.
            node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        display.AutoWindowLevelOff()
        display.SetWindowLevelMinMax(0.0, 1.0)
        mrml.set_array_like(node, probability, ctNode)
        # As an overlay: a heat colour map, and near-zero probability transparent.
        display.AutoThresholdOff()
        display.SetThreshold(PROBABILITY_SHOWN_FROM, 1.0)
        display.ApplyThresholdOn()
        if self.scene.GetNodeByID(PROBABILITY_COLORS) is not None:
            display.SetAndObserveColorNodeID(PROBABILITY_COLORS)
        return node

    def _lesionTable(self, segmentationNode):
        node = self.lesionTableNode(segmentationNode)
        if node is None:
            node = self.scene.AddNewNodeByClass("vtkMRMLTableNode", f"{segmentationNode.GetName()} lesions")
            segmentationNode.SetNodeReferenceID(mrml.TABLE_ROLE, node.GetID())
        return node

    def _show(self, segmentationNode, probabilityNode=None) -> None:
        display = segmentationNode.GetDisplayNode()
        if display is None:
            segmentationNode.CreateDefaultDisplayNodes()
            display = segmentationNode.GetDisplayNode()
        display.SetVisibility(True)
        display.SetVisibility2D(True)
        display.SetVisibility3D(True)
        segmentationNode.CreateClosedSurfaceRepresentation()  # 3D views show the closed surface
        if probabilityNode is not None:
            mrml.show_as_foreground(self.scene, probabilityNode)

    def exportResult(self, segmentationNode, folder, baseName="result") -> dict:
        """Write the tumor segment as it is now (with the user's corrections) the way the command
        line writes a result: `<base>.seg.nrrd` (Slicer segmentation), `<base>-labelmap.nrrd`
        (uint8, 1 = tumor), `<base>-lesions.csv` (the lesion table, measured on that segment) and,
        when the CT was loaded from a DICOM series (`dicomSource`), `<base>.dcm` (a DICOM SEG
        referencing it). Returns {"segmentation", "labelmap", "lesions"[, "dicom_seg"]} -> path."""
        from ..storage import images
        from ..core.lesions import lesion_table
        from ..storage.lesion_csv import write_lesion_csv

        segmentId = self.tumorSegmentId(segmentationNode)
        ctNode = segmentationNode.GetNodeReference(mrml.CT_ROLE) if segmentationNode else None
        if segmentId is None or ctNode is None:
            raise InputError("there is no tumor result to save; run Segment first")
        ct = mrml.volume_from_node(ctNode)
        mask = mrml.segment_to_mask(segmentationNode, segmentId, ctNode)
        probabilityNode = self.probabilityNode(segmentationNode)
        probability = mrml.volume_from_node(probabilityNode).array if probabilityNode is not None else None
        tumor = ct.with_array(mask.astype(np.uint8))
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {"segmentation": folder / f"{baseName}.seg.nrrd", "labelmap": folder / f"{baseName}-labelmap.nrrd",
                 "lesions": folder / f"{baseName}-lesions.csv"}
        images.write_segmentation(paths["segmentation"], tumor, [images.TUMOR_SEGMENT])
        images.write_labelmap(tumor, paths["labelmap"])
        write_lesion_csv(lesion_table(mask, ct, probability), paths["lesions"])
        source = self.dicomSource(ctNode)
        if source is not None:
            from ..storage.dicom_seg import write_tumor_seg

            paths["dicom_seg"] = folder / f"{baseName}.dcm"
            threshold = float(segmentationNode.GetAttribute(THRESHOLD_ATTRIBUTE) or "nan")
            write_tumor_seg(paths["dicom_seg"], tumor, source, segmentationNode.GetAttribute(MODEL_ATTRIBUTE) or "", threshold)
        return paths
