"""The Qt-free Slicer side: the MRML bridge (slicer imported lazily; runs in Slicer and under
slicer-core), background jobs, the Logic and the action rules both front ends share.
"""
