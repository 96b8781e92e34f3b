"""Random weights for the detectors whose real weights cannot be downloaded here.

Each file has the exact format of the real one, so the conditioners load it through their real
loading code: SPIGA's is a state dict of its 300W network (254 MB: the architecture is fixed),
OpenPifPaf's a whole pickled `Shell` with the animal-pose heads (1 MB). That `Shell` is made of the
real checkpoint's classes (the same names in its pickle, so the same allow-list check) with a
narrow, shallow ShuffleNetV2K backbone: random weights detect nothing real at any size, and the
real shufflenetv2k30's forward pass made animal_pose the slowest conditioner in every test that
runs it on many photos.
"""

from __future__ import annotations

from pathlib import Path

TEST_BACKBONE = "shufflenetv2k-tests"  # registered with OpenPifPaf's factory by the animal writer


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
    """A small ShuffleNetV2K with the animal heads, saved as openpifpaf's trainer saves checkpoints.

    The heads are set to fire everywhere (zero weights, confident biases, CAF endpoints one cell
    apart diagonally) so that the decoder returns animals, and the whole path to `Instance`s runs.
    """
    import torch

    from conditioners._openpifpaf import import_openpifpaf

    openpifpaf = import_openpifpaf()
    from openpifpaf.network import basenetworks
    from openpifpaf.network.factory import BASE_FACTORIES
    from openpifpaf.plugins.animalpose import AnimalKp

    # shufflenetv2k30 is ShuffleNetV2K with repeats [8, 16, 6] and channels [32, 512, 1024, 2048, 2048].
    BASE_FACTORIES.setdefault(
        TEST_BACKBONE, lambda: basenetworks.ShuffleNetV2K(TEST_BACKBONE, [1, 1, 1], [24, 64, 128, 256, 256])
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        factory = openpifpaf.network.Factory(base_name=TEST_BACKBONE, checkpoint=None)
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
