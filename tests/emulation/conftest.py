import pytest

from . import emulated


@pytest.fixture(scope="session")
def kernels():
    loaded = emulated.load()
    if loaded is None:
        pytest.skip(f"emulated CUDA kernels not built: run scripts/cuda_emulation_check.sh "
                    f"(it sets {emulated.LIBRARY_VARIABLE})")
    return loaded


@pytest.fixture(params=["h100", "consumer"])
def device(request, kernels):
    """Runs the test under each device profile, so the grid plans of a big and a small GPU both run."""
    kernels.set_device(request.param)
    yield request.param
    kernels.set_device("h100")
