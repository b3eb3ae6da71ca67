"""Files: image I/O (CT, label maps, DICOM series, Slicer .seg.nrrd), the case library, the model
store (the one model.json reader), atomic writes and the memory check. Builds on core.
"""
