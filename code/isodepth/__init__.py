"""Iso-depth scaling laws for looped language models: models, accounting, training and fits."""

__version__ = "0.1.0"
