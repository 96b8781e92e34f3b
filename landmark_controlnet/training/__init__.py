"""Flax ControlNet training behind train_flax_controlnet.py: data, models, step, checkpoints, export."""

from .models import silence_flax_deprecation

silence_flax_deprecation()  # before any Flax model module is imported: some warn at import time
