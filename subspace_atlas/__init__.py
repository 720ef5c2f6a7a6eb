"""Subspace Atlas: spectra, intruders, subspace overlap, update sparsity and task angles of weight matrices.

The base package imports no torch, so the dashboard (``app/``) installs light; compute modules import it.
"""

__version__ = "0.1.0"
