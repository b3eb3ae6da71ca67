"""LiverTumorSeg engine: MHP-Net liver tumor segmentation that learns from a handful of cases.

Pure Python (numpy, scipy, SimpleITK, torch). Nothing here imports slicer or qt except
`mrml.py` and `logic.py`, which import slicer lazily.
"""

__version__ = "0.1.0"
