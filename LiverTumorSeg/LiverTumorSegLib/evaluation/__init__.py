"""Judging a segmentation: metrics by lesion size, the classical HU-threshold floor and the fixed
held-out test sets that benchmarks and the default model's build share.
"""
