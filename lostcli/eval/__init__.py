"""Evaluation: metrics and report tables (docs/protocols.md): Chamfer / F-score, FD / KID, class accuracy
from the render classifier (the network is `models/classifier.py`), the reconstruction, retrieval, generation,
VAE and token-probe tables, the single-mesh VAE round trip, bootstrap intervals.

Layer (README, Code layout): imports `data`, `latent`, `models`, `teachers` and `pipeline`; never `train`,
`batch` or `cli` (what training and evaluation share lives in a lower layer)."""
