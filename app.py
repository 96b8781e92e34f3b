"""Landmark ControlNet Studio as a Hugging Face Space (front matter: space/README.md).

Locally, `landmark-controlnet app` serves the same app. On a Space it listens on all interfaces
(the Space's proxy is its only client) with the Space's folder as the data root.
"""

import os
from pathlib import Path

from landmark_controlnet.studio.app import StudioSettings, serve

if __name__ == "__main__":
    on_a_space = "SPACE_ID" in os.environ
    serve(
        StudioSettings(
            data_root=Path(os.environ.get("STUDIO_DATA_ROOT", Path.cwd())),
            host="0.0.0.0" if on_a_space else "127.0.0.1",
            port=int(os.environ.get("PORT", 7860)),
        )
    )
