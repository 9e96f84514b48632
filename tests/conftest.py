"""Test-wide settings: offline hubs, two threads, deterministic seeds."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)
    yield


SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")


def shared_path(*parts: str) -> str:
    """Path into ../shared (the fixtures and real meshes beside the checkout)."""
    return os.path.abspath(os.path.join(SHARED, *parts))
