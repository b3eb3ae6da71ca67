"""Training from a handful of cases: settings, the one step loop, validation and the threshold,
patch sampling, rehearsal when fine-tuning, the spot pass's fitting and the synthesis search.
"""
