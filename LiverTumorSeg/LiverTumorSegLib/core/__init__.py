"""Core computation, arrays in and arrays out: features (liver box, working grid, normalisation),
Hessian blob channels, the networks, inference, lesions, the spot pass and the liver finder
(liver*.py: the bundled liver network, its grid and its plausibility checks). Imports no other
engine folder.
"""
