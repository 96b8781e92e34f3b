"""Flax ControlNet training behind train_flax_controlnet.py: data, models, step, checkpoints, export."""

from conditioners.torchvision_guard import install_import_guard

install_import_guard()  # transformers' image processors import torchvision (see torchvision_guard)

from .models import silence_flax_deprecation  # noqa: E402

silence_flax_deprecation()  # before any Flax model module is imported: some warn at import time
