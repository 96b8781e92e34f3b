"""Stable Diffusion models owned by this project (Flax NNX); no torch, no diffusers."""
