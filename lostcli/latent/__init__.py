"""Shape VAEs that define the latent space: the Direct3D triplane VAE, the TRELLIS sparse-structure VAE,
their strict checkpoint loading and mesh extraction."""
