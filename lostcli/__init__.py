"""lost: Level-of-Semantics Tokenization for 3D shapes (CVPR 2026), as a toolkit."""

__version__ = "0.1.0"
