"""lost: Level-of-Semantics Tokenization for 3D shapes (CVPR 2026), as a toolkit.

What each top-level package is for, and which way they may import: README, "Code layout"
(enforced by tests/test_import_layers.py).
"""

__version__ = "0.1.0"
