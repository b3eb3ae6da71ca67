"""Core computation, arrays in and arrays out: features (liver box, working grid, normalisation),
Hessian blob channels, the networks, inference, lesions and the spot pass. Imports no other
engine folder.
"""
