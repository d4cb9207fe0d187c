"""migfuse: micro-gesture and emotion recognition on iMiGUE as a two-stage feature-cache pipeline.

extract (GPU box, once) -> Zarr token cache -> fuse (laptop, minutes) -> export (challenge files).
"""
__version__ = "0.1.0"
