"""Jobs that run a model over every item of a dataset store (latents, and later features and tokens).

They sit one level above `data` (which only reads and writes the store) and the models, resumable and
shardable across Accelerate processes like `lost dataset prepare`.
"""
