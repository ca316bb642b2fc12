"""bnlint: lint and fold BatchNormalization in model graphs."""

__version__ = "0.1.0"
