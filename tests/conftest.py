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


def pytest_report_header(config):
    """Which CPU kernels and how many threads: float results differ by reassociation across them
    (``make test-isa`` caps the ISA at AVX2)."""
    import torch

    keys = "ATEN_CPU_CAPABILITY ONEDNN_MAX_CPU_ISA MKL_ENABLE_INSTRUCTIONS OMP_NUM_THREADS".split()
    caps = " ".join(f"{k}={os.environ[k]}" for k in keys if k in os.environ)
    isa, threads = torch.backends.cpu.get_cpu_capability(), torch.get_num_threads()
    line = f"torch {torch.__version__}: {isa} kernels, {threads} threads"
    return f"{line} ({caps})" if caps else line
