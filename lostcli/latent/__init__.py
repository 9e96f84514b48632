"""Shape VAEs that define the latent space: the Direct3D triplane VAE, the TRELLIS sparse-structure VAE,
the registry that saves and loads them (weight files are read by `persist`) and mesh extraction.

Layer (README, Code layout): imports only `config`, `errors` and `persist`; beside `data`, below `models`."""
