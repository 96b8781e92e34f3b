"""ControlNet training behind train_flax_controlnet.py: data, models, step, checkpoints, export.

The models are the project's own (`landmark_controlnet.diffusion`); transformers gives the tokenizer.
"""

from conditioners.torchvision_guard import install_import_guard

install_import_guard()  # transformers may import torchvision (see torchvision_guard)
