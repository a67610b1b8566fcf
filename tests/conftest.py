import pytest
import torch


@pytest.fixture(scope="session")
def compiled():
    """The compiled operator; a build failure fails the test rather than skipping it."""
    from nuir.ops import ensure_registered

    assert ensure_registered(), "the compiled nuir operator did not build"
    return torch.ops.nuir


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
