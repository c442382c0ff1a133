"""Worked examples that need the ``examples`` extra (torch, scikit-learn); never imported by the
core package."""
