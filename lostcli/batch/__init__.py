"""Jobs over a dataset store: run a model over every item and write a table (`latents`: the shape VAE's
posterior means; `features`: teacher embeddings; `tokens`: a bundle's tokens for GPT training), plus
`lost decode`, which writes the meshes of every prefix of a tokens file, and `images`: one FLUX image per line of
a prompts file (`lost dataset images`, the data engine's text -> image stage).

Resumable and shardable across Accelerate processes like `lost dataset prepare`. Layer (README, Code layout):
imports `data`, `latent`, `models` and `pipeline` (tokens come from a bundle's `LostPipeline`); never `train`,
`eval` or `cli`. Single-mesh tools are not jobs: the VAE round trip of one mesh is `eval/vae_roundtrip.py`.
"""
