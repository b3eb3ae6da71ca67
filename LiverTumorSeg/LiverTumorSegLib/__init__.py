"""LiverTumorSeg engine: MHP-Net liver tumor segmentation that learns from a handful of cases.

One folder per layer; each imports only the ones before it (Testing/test_layers.py holds this):
core -> storage -> data -> evaluation -> training -> slicer (the Qt-free Slicer side) -> cli.py and
demo.py (front ends). errors.py, volume.py and protocol.py are shared by all. Pure Python (numpy,
scipy, SimpleITK, torch); only slicer/ imports slicer, and only inside functions.
"""

__version__ = "0.1.0"
