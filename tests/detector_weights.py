"""Random weights for the detectors whose real weights cannot be downloaded here.

Each file has the exact format of the real one, so the conditioners load it through their real
loading code: SPIGA's is a state dict of its 300W network (254 MB: the architecture is fixed),
OpenPifPaf's a whole pickled `Shell` with the animal-pose heads (110 MB).
"""

from __future__ import annotations

from pathlib import Path


def write_random_spiga_weights(path: Path, seed: int = 0) -> Path:
    import torch

    from conditioners._spiga import _import_spiga

    _, model_config, network, _ = _import_spiga()
    dataset = model_config("300wpublic", load_model_url=False).dataset
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = network(num_landmarks=dataset.num_landmarks, num_edges=dataset.num_edges)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def write_random_animal_checkpoint(path: Path, seed: int = 0, meta: dict | None = None) -> Path:
    """A shufflenetv2k30 with the animal heads, saved as openpifpaf's trainer saves checkpoints.

    The heads are set to fire everywhere (zero weights, confident biases, CAF endpoints one cell
    apart diagonally) so that the decoder returns animals, and the whole path to `Instance`s runs.
    """
    import torch

    from conditioners._openpifpaf import import_openpifpaf

    openpifpaf = import_openpifpaf()
    from openpifpaf.plugins.animalpose import AnimalKp

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        factory = openpifpaf.network.Factory(base_name="shufflenetv2k30", checkpoint=None)
        net, _ = factory.factory(head_metas=AnimalKp().head_metas)
    with torch.no_grad():
        for head in net.head_nets:
            weight = head.conv.weight.view(head.n_fields, head.n_components, -1)
            bias = head.conv.bias.view(head.n_fields, head.n_components)
            weight.zero_()
            bias.zero_()
            bias[:, 1] = 4.0  # confidence logit
            bias[:, 1 + head.n_confidences + head.n_vectors * 2 :] = 4.0  # scales (softplus)
            if head.meta.name == "caf":
                bias[:, 2:6] = torch.tensor([-0.5, -0.5, 0.5, 0.5])  # x1, y1, x2, y2
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": net, "epoch": 0, "meta": meta or {"note": "random weights for tests"}}, path)
    return path
