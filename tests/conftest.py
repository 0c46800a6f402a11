"""Shared fixtures: offline hub, a tiny phantom dataset, a tiny trained-for-a-few-steps model."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    from vlseg.data.phantoms import write_dataset

    return write_dataset(
        tmp_path_factory.mktemp("phantoms") / "d", 12, seed=3, size=64, n_heldout=2, progress=False
    )
