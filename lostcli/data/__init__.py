"""Shapes and the dataset store: mesh loading and normalisation, surface/occupancy sampling, renders, the
built-in procedural dataset, prompts, and the sharded on-disk store every later stage reads. Imports no model,
training or evaluation code."""
