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


@pytest.fixture
def timm_model_yaml(tmp_path):
    """A function writing a tiny timm-tower model YAML (resnet10t at 64 px, a 1-layer text
    tower) with the given embedding pool and projection; returns its path."""
    import yaml

    def write(pool: str = "rot_attn", proj: str = "none", name: str = "m.yaml"):
        path = tmp_path / name
        text_cfg = {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
        vision_cfg = {"timm_model_name": "resnet10t", "timm_pool": pool, "timm_proj": proj,
                      "image_size": 64}  # fmt: skip
        path.write_text(yaml.safe_dump({
            "name": "tiny-timm",
            "clip": {"config": {"embed_dim": 32, "vision_cfg": vision_cfg, "text_cfg": text_cfg}},
            "image_size": 64, "pyramid_dim": 16, "decoder_dim": 16, "kernel_sizes": [3],
            "num_heads": 2, "text_trainable": "frozen",
        }))  # fmt: skip
        return path

    return write


def pytest_report_header(config):
    """Which CPU kernels and how many threads: float results differ by reassociation across them
    (``make test-isa`` caps the ISA at AVX2)."""
    import torch

    keys = "ATEN_CPU_CAPABILITY ONEDNN_MAX_CPU_ISA MKL_ENABLE_INSTRUCTIONS OMP_NUM_THREADS".split()
    caps = " ".join(f"{k}={os.environ[k]}" for k in keys if k in os.environ)
    isa, threads = torch.backends.cpu.get_cpu_capability(), torch.get_num_threads()
    line = f"torch {torch.__version__}: {isa} kernels, {threads} threads"
    return f"{line} ({caps})" if caps else line
