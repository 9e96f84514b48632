"""Metrics and report tables (docs/protocols.md): Chamfer / F-score, FD / KID, the render classifier, the
reconstruction, retrieval, generation and token-probe tables, bootstrap intervals."""
