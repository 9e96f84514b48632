"""Image to 3D with Direct3D's networks: image conditioning (`condition`) and the sampling pipeline (`pipeline`).

Sits above `latent` (the D3D-VAE and D3D-DiT networks) and loads the image encoders by spec (hub id or folder)
through `transformers`.
"""

from .condition import ImageCondition, ImageEncoders, load_encoders, preprocess
from .pipeline import ImageTo3D, ImageTo3DConfig, sample_latents

__all__ = ["ImageCondition", "ImageEncoders", "ImageTo3D", "ImageTo3DConfig", "load_encoders", "preprocess",
           "sample_latents"]
