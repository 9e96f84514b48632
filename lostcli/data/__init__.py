"""Shapes and the dataset store: mesh loading and normalisation, surface/occupancy sampling, renders, the
built-in procedural dataset, prompts, and the sharded on-disk store every later stage reads (`data.latents`:
the `latents` table that training and evaluation both open).

Layer (README, Code layout): imports only `config`, `errors` and `persist`; no model, training, evaluation,
pipeline or CLI code."""
