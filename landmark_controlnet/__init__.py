"""Command-line entry points of Landmark ControlNet (`landmark-controlnet ...`)."""
