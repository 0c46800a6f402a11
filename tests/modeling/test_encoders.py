"""VisionEncoder / TextEncoder / build_towers on tiny random open_clip towers (CPU)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import copy  # noqa: E402

import open_clip  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from open_clip.tokenizer import SimpleTokenizer  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from vlseg.modeling.text_encoder import TextEncoder  # noqa: E402
from vlseg.modeling.towers import build_towers, known_config  # noqa: E402
from vlseg.modeling.vision_encoder import VisionEncoder  # noqa: E402

TEXT_CFG = {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}


def vit_cfg(patch: int = 8, image: int = 64) -> dict:
    return {
        "embed_dim": 32,
        "vision_cfg": {
            "image_size": image,
            "layers": 2,
            "width": 64,
            "head_width": 32,
            "patch_size": patch,
        },
        "text_cfg": dict(TEXT_CFG),
    }


TIMM_CFG = {
    "embed_dim": 32,
    "vision_cfg": {
        "timm_model_name": "resnet10t",
        "timm_pool": "avg",
        "timm_proj": "linear",
        "image_size": 64,
    },
    "text_cfg": dict(TEXT_CFG),
}
RN_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "head_width": 64},
    "text_cfg": dict(TEXT_CFG),
}
HF_TEXT_CFG = {
    "hf_model_name": "minilm",
    "hf_tokenizer_name": "minilm",
    "hf_proj_type": "mlp",
    "hf_pooler_type": "mean_pooler",
    "context_length": 32,
}
PROMPTS = ["the hepatic lesion", "both kidneys in the lower abdomen", ""]
# Our wrappers vs open_clip's own forward use torch's fp32 defaults (atol 1e-5, rtol 1.3e-6): the
# two paths differ by reassociation only, <= 1.4e-6 on outputs of scale ~3 on every ISA and thread
# count measured (AVX-512, AVX2, SSE4.1; 1 and 2 threads), a 10x margin; a real difference in the
# computation (another layer, pooling or mask) shows at the scale of the outputs.


def strides_ok(out: dict, h: int, w: int, channels: list[int]) -> None:
    feats = out["features"]
    assert len(feats) == 4
    for f, s, c in zip(feats, (4, 8, 16, 32), channels, strict=True):
        assert f.shape[1:] == (c, h // s, w // s)


@pytest.fixture(scope="module")
def tiny_clip():
    torch.manual_seed(0)
    model = open_clip.model.CLIP(**vit_cfg()).eval()
    vision = VisionEncoder(visual=model.visual, embed_dim=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    text = TextEncoder(clip_model=model, tokenizer=SimpleTokenizer(), context_length=32)
    return model, vision.eval(), text.eval()


@pytest.fixture(scope="module")
def hf_towers():
    torch.manual_seed(0)
    cfg = vit_cfg()
    cfg["text_cfg"] = dict(HF_TEXT_CFG)
    vision, text, _ = build_towers({"config": cfg})  # real MiniLM weights from the local dir
    return vision.eval(), text.eval()


@pytest.mark.parametrize("patch", [8, 16])
def test_vit_pyramid_shapes_and_embedding(patch):
    torch.manual_seed(0)
    vision, _, logit_scale = build_towers({"config": vit_cfg(patch)}, pyramid_dim=48)
    vision.eval()
    x = torch.randn(2, 3, 64, 64)
    out = vision(x)
    assert vision.tower_kind == "vit" and vision.out_channels == [48] * 4
    strides_ok(out, 64, 64, vision.out_channels)
    with torch.no_grad():
        torch.testing.assert_close(out["embedding"], vision.visual(x))
    assert logit_scale.ndim == 0 and isinstance(logit_scale, torch.nn.Parameter)
    assert vision.image_size == (64, 64) and len(vision.mean) == 3


def test_vit_native_pyramid_channels_without_projection():
    vision, _, _ = build_towers({"config": vit_cfg(16)}, pyramid_dim=None)
    assert vision.out_channels == [16, 32, 64, 64]  # x4 and x2 deconvs halve channels
    strides_ok(vision(torch.randn(1, 3, 64, 64)), 64, 64, vision.out_channels)


def test_vit_non_native_size(tiny_clip):
    _, vision, _ = tiny_clip
    out = vision(torch.randn(1, 3, 96, 128))  # native 64x64
    strides_ok(out, 96, 128, vision.out_channels)
    assert out["embedding"].shape == (1, 32)
    with pytest.raises(ValueError, match="multiple of 32"):
        vision(torch.randn(1, 3, 72, 64))


def test_image_embedding_matches_encode_image(tiny_clip):
    model, vision, _ = tiny_clip
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(vision(x)["embedding"], model.encode_image(x))


def test_timm_cnn_tower():
    torch.manual_seed(0)
    vision, _, _ = build_towers({"config": TIMM_CFG}, pyramid_dim=None)
    vision.eval()
    assert vision.tower_kind == "timm_cnn"
    assert vision.out_channels == [64, 128, 256, 512]
    x = torch.randn(2, 3, 64, 64)
    out = vision(x)
    strides_ok(out, 64, 64, vision.out_channels)
    with torch.no_grad():
        torch.testing.assert_close(out["embedding"], vision.visual(x))
    strides_ok(vision(torch.randn(1, 3, 96, 128)), 96, 128, vision.out_channels)


def test_modified_resnet_tower():
    torch.manual_seed(0)
    vision, _, _ = build_towers({"config": RN_CFG})
    vision.eval()
    assert vision.tower_kind == "modified_resnet"
    x = torch.randn(2, 3, 64, 64)
    out = vision(x)
    strides_ok(out, 64, 64, [256] * 4)
    with torch.no_grad():
        torch.testing.assert_close(out["embedding"], vision.visual(x))


@pytest.mark.slow
def test_timm_vit_tower():
    torch.manual_seed(0)
    cfg = copy.deepcopy(TIMM_CFG)
    cfg["vision_cfg"].update(timm_model_name="vit_tiny_patch16_224", timm_pool="", image_size=224)
    vision, _, _ = build_towers({"config": cfg}, pyramid_dim=32)
    vision.eval()
    assert vision.tower_kind == "timm_vit"
    x = torch.randn(1, 3, 224, 224)
    out = vision(x)
    strides_ok(out, 224, 224, [32] * 4)
    with torch.no_grad():
        torch.testing.assert_close(out["embedding"], vision.visual(x))


def test_clip_text_matches_encode_text_and_mask(tiny_clip):
    model, _, text = tiny_clip
    tok = text.tokenize(PROMPTS)
    ids, mask = tok["ids"], tok["mask"]
    longest = int(mask.sum(1).max())
    # trailing all-padding columns are trimmed: T is the longest prompt, not the context length
    assert ids.shape == mask.shape == (3, longest) and longest < 32 and mask.dtype == torch.bool
    assert mask[2].sum() == 2  # empty prompt: start + end tokens
    assert mask.sum(1).tolist() == [(ids[i] != 0).sum().item() for i in range(3)]
    full = text.tokenizer(PROMPTS, context_length=32)  # open_clip's own padded tokens
    with torch.no_grad():
        out = text(ids, mask)
        torch.testing.assert_close(out["embedding"], model.encode_text(full))
    assert out["tokens"].shape == (3, longest, text.width) and text.width == 64
    assert out["embedding"].shape == (3, text.embed_dim)
    # padding positions cannot change real tokens or the embedding (causal mask + EOT pooling)
    noisy = ids.masked_fill(~mask, 1000)
    with torch.no_grad():
        out2 = text(noisy, mask)
    torch.testing.assert_close(out2["embedding"], out["embedding"])
    torch.testing.assert_close(out2["tokens"][mask], out["tokens"][mask])


def test_text_truncates_long_prompts(tiny_clip):
    _, _, text = tiny_clip
    tok = text.tokenize(["lesion " * 100])
    assert tok["mask"].all() and tok["ids"][0, -1] == text.tokenizer.eot_token_id


def test_custom_text_clip_tower():
    torch.manual_seed(0)
    model = open_clip.model.CustomTextCLIP(**vit_cfg()).eval()
    text = TextEncoder(clip_model=model, tokenizer=SimpleTokenizer(), context_length=32).eval()
    tok = text.tokenize(PROMPTS[:2])
    full = text.tokenizer(PROMPTS[:2], context_length=32)
    with torch.no_grad():
        torch.testing.assert_close(text(**tok)["embedding"], model.encode_text(full))


def test_hf_text_matches_encode_text_and_mask(hf_towers):
    _, text = hf_towers
    assert text.tower_kind == "hf" and text.width == 384
    tok = text.tokenize(PROMPTS)
    ids, mask = tok["ids"], tok["mask"]
    assert mask[2].sum() == 2 and mask.sum(1).tolist() == (ids != 0).sum(1).tolist()
    with torch.no_grad():
        out = text(ids, mask)
        torch.testing.assert_close(out["embedding"], text.text(ids))  # CustomTextCLIP.encode_text
        out2 = text(ids.masked_fill(~mask, 1000), mask)
    torch.testing.assert_close(out2["embedding"], out["embedding"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out2["tokens"][mask], out["tokens"][mask], atol=1e-5, rtol=1e-4)
    assert out["tokens"].shape == (3, ids.shape[1], 384) and out["embedding"].shape == (3, 32)


def test_hf_text_loads_pretrained_minilm(hf_towers):
    from safetensors.torch import load_file

    from vlseg.modeling.towers import minilm_path

    _, text = hf_towers
    ref = load_file(os.path.join(minilm_path(), "model.safetensors"))
    key = next(k for k in ref if k.endswith("word_embeddings.weight"))
    ours = dict(text.text.transformer.named_parameters())
    torch.testing.assert_close(ours[key.removeprefix("bert.")], ref[key])


def test_backward_and_freeze(tiny_clip):
    torch.manual_seed(0)
    vision, text, scale = build_towers({"config": vit_cfg()})
    vision.train()
    text.train()
    out = vision(torch.randn(2, 3, 64, 64))
    t = text(**text.tokenize(PROMPTS[:2]))
    loss = sum(f.mean() for f in out["features"]) + out["embedding"].sum() + t["tokens"].mean()
    (loss + (t["embedding"] * scale.exp()).sum()).backward()
    assert vision.visual.conv1.weight.grad is not None
    assert all(p.grad is not None for p in vision.neck.parameters())
    assert text.token_embedding.weight.grad is not None

    vision.set_trainable("frozen")
    assert not any(p.requires_grad for p in vision.visual.parameters())
    assert all(p.requires_grad for p in vision.neck.parameters())
    assert not vision.visual.training and vision.training
    with pytest.raises(ValueError, match="choose one of"):
        vision.set_trainable("lora")


def test_pretrained_local_file_is_loaded(tmp_path):
    torch.manual_seed(1)
    model = open_clip.model.CLIP(**vit_cfg()).eval()
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    vision, text, scale = build_towers({"config": vit_cfg()}, pretrained=str(path))
    x = torch.randn(1, 3, 64, 64)
    ids = text.tokenize(["a kidney"])
    with torch.no_grad():
        torch.testing.assert_close(vision.eval()(x)["embedding"], model.encode_image(x))
        full = text.tokenizer(["a kidney"], context_length=text.context_length)
        torch.testing.assert_close(text.eval()(**ids)["embedding"], model.encode_text(full))
    torch.testing.assert_close(scale.detach(), model.logit_scale.detach())


def test_bad_specs():
    with pytest.raises(ValueError, match="exactly one"):
        build_towers({})
    with pytest.raises(ValueError, match="unknown clip keys"):
        build_towers({"config": vit_cfg(), "extra": 1})
    with pytest.raises(ValueError, match="Available"):
        known_config("no-such-model")


def test_text_tower_missing_from_the_offline_hub_names_it_and_the_fix():
    from huggingface_hub import try_to_load_from_cache

    spec = known_config("biomedclip-vit-b-16")
    repo = spec["config"]["text_cfg"]["hf_model_name"]
    if isinstance(try_to_load_from_cache(repo, "config.json"), str):
        pytest.skip(f"{repo} is in this machine's hub cache")
    with pytest.raises(OSError, match="needs microsoft/BiomedNLP.* from the Hugging Face hub") as e:
        build_towers(spec)
    assert "hf_model_name" in str(e.value) and "local directory" in str(e.value)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["ViT-B-16", "dermlip-vit-b-16", "biomedclip-vit-b-16"])
def test_named_configs_build_at_224(which):
    torch.manual_seed(0)
    if which == "ViT-B-16":
        spec = {"name": "ViT-B-16"}  # open_clip built-in config, form (a), random init
    else:
        spec = known_config(which)
        if "hf_model_name" in spec["config"]["text_cfg"]:
            # BiomedBERT cannot be fetched offline: same structure, MiniLM text tower
            spec["config"]["text_cfg"].update(
                hf_model_name="minilm", hf_tokenizer_name="minilm", hf_model_pretrained=False
            )
    vision, text, _ = build_towers(spec)
    vision.eval()
    text.eval()
    with torch.no_grad():
        out = vision(torch.randn(1, 3, 224, 224))
        t = text(**text.tokenize(["a melanoma"]))
    strides_ok(out, 224, 224, [256] * 4)
    assert out["embedding"].shape == (1, 512) and t["embedding"].shape == (1, 512)
