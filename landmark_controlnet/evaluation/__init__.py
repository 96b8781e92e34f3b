"""Control fidelity: does a generated image follow its landmarks? (`landmark-controlnet evaluate`)"""
