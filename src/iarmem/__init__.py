"""iarmem: find, measure and reduce training-image memorization in image autoregressive models."""

__version__ = "0.1.0"
