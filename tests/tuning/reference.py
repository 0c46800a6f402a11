"""Reference outputs of un-prompted models, to prove the prompt hooks leave defaults unchanged.

The references in ``data/`` were computed with the encoders as they were before the prompt-tuning
hooks existed. Every weight is set from a closed formula (no RNG), so the same numbers come back
on any machine with the same torch build, up to float reassociation: the CPU's kernels (AVX-512,
AVX2, SSE; the thread count) sum in different orders, so the test compares with a tolerance
relative to each tensor's scale. Regenerate (only when torch's kernels change) with::

    python tests/tuning/reference.py
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"
TEXTS = ["the hepatic lesion", "both kidneys in the lower abdomen and the spine", "a nevus"]

# phantom-tiny's architecture at a test size: timm resnet10t vision + the HF MiniLM text tower.
CNN_HF = {
    "name": "cnn-hf-test",
    "clip": {
        "config": {
            "embed_dim": 32,
            "vision_cfg": {
                "timm_model_name": "resnet10t",
                "timm_model_pretrained": False,
                "timm_pool": "avg",
                "timm_proj": "linear",
                "image_size": 64,
            },
            "text_cfg": {
                "hf_model_name": "minilm",
                "hf_tokenizer_name": "minilm",
                "hf_proj_type": "linear",
                "hf_pooler_type": "mean_pooler",
                "context_length": 32,
            },
        }
    },
    "image_size": 64,
    "pyramid_dim": 32,
    "decoder_dim": 32,
    "kernel_sizes": [3, 5],
    "num_heads": 2,
    "text_trainable": "frozen",
}


def model_config(which: str):
    from vlseg.config import ModelConfig, from_dict
    from vlseg.registry import model_config as registered

    return registered("tiny-test") if which == "tiny-test" else from_dict(ModelConfig, CNN_HF)


@torch.no_grad()
def deterministic_(model: torch.nn.Module) -> torch.nn.Module:
    """Overwrite every floating parameter/buffer with a smooth closed-form pattern."""
    for i, (name, t) in enumerate(sorted(model.state_dict().items())):
        if t.is_floating_point() and t.numel():
            k = torch.arange(t.numel(), dtype=torch.float64)
            vals = 0.1 * torch.sin(0.37 * k + 0.5 * i) + 0.02 * torch.cos(0.011 * k * (i + 1))
            if t.ndim == 1 and t.numel() > 1:  # norms and biases: keep scales near one
                vals = vals + 1.0 if i % 2 == 0 else vals
            if name.endswith("running_var"):
                vals = vals.abs() + 0.5
            t.copy_(vals.reshape(t.shape).to(t.dtype))
    return model


def inputs(size: int, n: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    imgs = [
        torch.stack([torch.sin(0.1 * (c + 1) * xx + 0.07 * b * yy) for c in range(3)])
        for b in range(n)
    ]
    return torch.stack(imgs).float()


@torch.no_grad()
def reference_outputs(which: str) -> dict[str, torch.Tensor]:
    """Forward outputs of the deterministic model (eval mode) on fixed images and texts."""
    from vlseg.registry import build_model

    cfg = model_config(which)
    model = deterministic_(build_model(cfg)).eval()
    tok = model.text.tokenize(TEXTS)
    out = model(inputs(cfg.image_size, len(TEXTS)), tok["ids"], tok["mask"])
    txt = model.text(tok["ids"], tok["mask"])
    res = {
        "logits": out["logits"],
        "presence": out["presence"],
        "image_embedding": out["image_embedding"],
        "text_embedding": out["text_embedding"],
        "tokens": txt["tokens"],
    }
    for i, a in enumerate(out["aux"]):
        res[f"aux{i}"] = a
    return {k: v.contiguous() for k, v in res.items()}


def reference_path(which: str) -> Path:
    return DATA / f"{which}.safetensors"


if __name__ == "__main__":
    from safetensors.torch import save_file

    from vlseg.registry import build_model

    DATA.mkdir(exist_ok=True)
    for which in ("tiny-test", "cnn-hf-test"):
        keys = "\n".join(sorted(build_model(model_config(which)).state_dict()))
        meta = {"torch": torch.__version__, "state_dict_keys": keys}
        save_file(reference_outputs(which), str(reference_path(which)), metadata=meta)
        print(f"wrote {reference_path(which)}")
