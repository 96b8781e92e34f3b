#!/usr/bin/env python
"""Train a ControlNet with JAX/Flax on CPU, GPU or TPU (single host or a multi-host pod slice).

Its flags are a superset of the diffusers Flax ControlNet example's. The work is done by
`landmark_controlnet.training`: flags, data (no torch), models, the jitted step, checkpoints,
validation and export. `landmark-controlnet train` is the same command.

    python train_flax_controlnet.py \\
        --pretrained_model_name_or_path stable-diffusion-v1-5/stable-diffusion-v1-5 \\
        --dataset_name ./builders/hagrid_hand_enc --output_dir runs/hands --resolution 512 \\
        --train_batch_size 4 --max_train_steps 20000 --mixed_precision bf16
"""

from __future__ import annotations

import sys

from landmark_controlnet.training.flags import main

if __name__ == "__main__":
    sys.exit(main())
