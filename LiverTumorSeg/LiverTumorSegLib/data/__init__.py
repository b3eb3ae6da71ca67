"""Synthetic data with known truth: abdominal phantoms, synthetic tumors pasted into real CTs and
their placement helpers. Builds on core and storage.
"""
