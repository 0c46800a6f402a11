"""Prompt tuning (CoOp, CoCoOp, VPT, MaPLe, LoRA) on tiny models: hooks, training, adapters."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

import vlseg
from vlseg.adapters import attach, state_dict_sha256
from vlseg.checkpoint import load_checkpoint, save_checkpoint
from vlseg.cli import main as cli_main
from vlseg.config import ModelConfig, from_dict
from vlseg.data.manifest import ManifestDataset
from vlseg.engine import fit, make_datasets
from vlseg.evaluation import evaluate_served
from vlseg.registry import build_model, model_config
from vlseg.tuning import TuneConfig, few_shot_records, tune

_spec = importlib.util.spec_from_file_location(
    "tuning_reference", Path(__file__).with_name("reference.py")
)
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)

METHODS = ["coop", "cocoop", "vpt", "maple", "lora"]
REPO = Path(__file__).resolve().parents[2]


def _base_state(model) -> dict[str, torch.Tensor]:
    """Base tensors under their un-adapted keys (LoRA moves weights to ``.base_layer.``)."""
    return {
        k.replace(".base_layer.", "."): v.detach().clone()
        for k, v in model.state_dict().items()
        if not k.startswith("prompter.") and "lora_" not in k
    }


@pytest.fixture(scope="module")
def base_ckpt(tmp_path_factory):
    """A tiny-test model with fixed weights saved as a checkpoint (the base to tune)."""
    torch.manual_seed(0)
    cfg = model_config("tiny-test")
    return save_checkpoint(build_model(cfg), cfg, tmp_path_factory.mktemp("base") / "tiny")


@pytest.fixture(scope="module")
def cnn_cfg(tmp_path_factory):
    """phantom-tiny's vision tower (timm resnet10t) with tiny-test's CLIP text tower, 64 px."""
    data = yaml.safe_load((REPO / "configs/models/tiny-test.yaml").read_text())
    data["name"] = "tiny-cnn"
    data["clip"]["config"]["vision_cfg"] = {
        "timm_model_name": "resnet10t",
        "timm_model_pretrained": False,
        "timm_pool": "avg",
        "timm_proj": "linear",
        "image_size": 64,
    }
    path = tmp_path_factory.mktemp("cfg") / "tiny-cnn.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _tune_cfg(method, base, data, out, **kw):
    base_kw = dict(
        method=method,
        model=str(base),
        data=str(data),
        out=str(out),
        limit=4,
        epochs=1,
        max_steps=3,
        batch_size=4,
        num_workers=0,
        warmup_steps=1,
        val_limit=4,
        eval_limit=8,
        log_every=1,
        lr=5e-2,
        deep=method == "maple",
    )
    base_kw.update(kw)
    return TuneConfig(**base_kw)


def _test_set(seg, data):
    vis = seg.model.vision
    return ManifestDataset(
        data, "test", image_size=seg.image_size, mean=vis.mean, std=vis.std, prompt="all"
    )


# ---------------------------------------------------------------------------- encoder hooks
@pytest.mark.parametrize(
    "which", ["tiny-test", pytest.param("cnn-hf-test", marks=pytest.mark.slow)]
)
def test_default_outputs_and_keys_match_pre_hook_reference(which):
    ref_path = reference.reference_path(which)
    with safe_open(str(ref_path), "pt") as f:
        keys = f.metadata()["state_dict_keys"].split("\n")
    cfg = reference.model_config(which)
    assert sorted(build_model(cfg).state_dict()) == keys  # old checkpoints still load
    ref = load_file(str(ref_path))
    new = reference.reference_outputs(which)
    for k in ref:
        # Equal up to float reassociation: CPU kernels (AVX-512/AVX2/SSE, thread count) sum in
        # other orders. ~20 fp32 layers of up to K=4608 (3x3x512) terms: L*sqrt(K)*2^-24 ~ 8e-5
        # of a tensor's scale (measured: <= 4.3e-5 on logits); a hook changing outputs by 1e-2
        # still fails by 20x or more.
        scale = ref[k].abs().max().item()
        torch.testing.assert_close(new[k], ref[k], rtol=0, atol=2e-4 * scale + 1e-6, msg=k)


def test_detached_learner_restores_default_outputs():
    def run(model):
        tok = model.text.tokenize(reference.TEXTS)
        with torch.no_grad():
            return model(reference.inputs(64, len(reference.TEXTS)), tok["ids"], tok["mask"])

    cfg = reference.model_config("tiny-test")
    model = reference.deterministic_(build_model(cfg)).eval()
    attach(model, {"method": "maple", "n_ctx": 2, "deep": True})
    model.attach_prompter(None)
    assert "prompter.ctx" not in model.state_dict()
    # the same freezing without any learner (requires_grad flags can pick other CPU kernels)
    plain = reference.deterministic_(build_model(cfg)).eval()
    plain.vision.set_trainable("frozen")
    plain.text.set_trainable("frozen")
    plain.requires_grad_(False)
    got, want = run(model), run(plain)
    for k in ("logits", "presence", "image_embedding", "text_embedding"):
        assert torch.equal(got[k], want[k]), k


def test_context_equals_the_same_words_written_in_the_prompt():
    torch.manual_seed(0)
    text = build_model(model_config("tiny-test")).text.eval()
    words = text.tokenize(["dark round"])
    ctx = text.embed_tokens(words["ids"])[:, 1:3]  # (1, 2, D) without start/end tokens
    plain = text.tokenize(["the hepatic lesion", "both kidneys"])
    joined = text.tokenize(["dark round the hepatic lesion", "dark round both kidneys"])
    with torch.no_grad():
        got = text(plain["ids"], plain["mask"], ctx=ctx)
        want = text(joined["ids"], joined["mask"])
    assert torch.equal(got["mask"], want["mask"])
    # same tokens through the same layers (bit-identical on every ISA/thread count measured);
    # 1e-5 of features of scale ~3 only absorbs another kernel choice, a misplaced ctx moves >0.1
    torch.testing.assert_close(got["tokens"], want["tokens"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got["embedding"], want["embedding"], atol=1e-5, rtol=1e-5)


def test_context_fits_a_full_length_prompt_and_keeps_the_end_token():
    torch.manual_seed(0)
    text = build_model(model_config("tiny-test")).text.eval()
    long = text.tokenize(["lesion " * 40, "liver"])  # the first fills all 24 slots
    assert long["ids"].shape[1] == text.context_length
    ctx = torch.randn(1, 4, text.width)
    out = text(long["ids"], long["mask"], ctx=ctx)
    assert out["tokens"].shape[1] == text.context_length
    assert torch.isfinite(out["embedding"]).all()
    with pytest.raises(ValueError, match="must be"):
        text(long["ids"], long["mask"], ctx=torch.randn(3, 4, text.width))


def test_deep_prompts_reach_later_layers_and_hooks_are_removed():
    torch.manual_seed(0)
    model = build_model(model_config("tiny-test")).eval()
    text, vision = model.text, model.vision
    tok = text.tokenize(["the liver"])
    ctx = torch.randn(1, 3, text.width)
    with torch.no_grad():
        shallow = text(tok["ids"], tok["mask"], ctx=ctx)["embedding"]
        deep = text(tok["ids"], tok["mask"], ctx=ctx, deep_ctx=[torch.randn(1, 3, text.width)])
        x = torch.randn(2, 3, 64, 64)
        plain = vision(x)
        prompted = vision(x, torch.randn(1, 5, vision.token_width), [torch.zeros(1, 5, 64)])
    assert not torch.allclose(shallow, deep["embedding"])
    assert all(not layer._forward_pre_hooks for layer in [*text.layers, *vision.layers])
    assert [f.shape for f in prompted["features"]] == [f.shape for f in plain["features"]]
    assert not torch.allclose(prompted["embedding"], plain["embedding"])
    with pytest.raises(ValueError, match="at most 1"):
        text(tok["ids"], tok["mask"], ctx=ctx, deep_ctx=[ctx, ctx])


def test_ctx_init_from_a_phrase():
    torch.manual_seed(0)
    model = build_model(model_config("tiny-test"))
    attach(model, {"method": "coop", "n_ctx": 3, "ctx_init": "a ct scan"})
    ids = model.text.tokenize(["a ct scan"])["ids"]
    assert torch.equal(model.prompter.ctx.data, model.text.embed_tokens(ids)[0, 1:4])
    with pytest.raises(ValueError, match="set n_ctx=3"):
        attach(
            build_model(model_config("tiny-test")),
            {"method": "coop", "n_ctx": 4, "ctx_init": "a ct scan"},
        )


# ---------------------------------------------------------------------------- training
@pytest.mark.parametrize("method", METHODS)
def test_only_the_learner_trains(method, base_ckpt, tiny_data, tmp_path):
    model, mcfg, _ = load_checkpoint(base_ckpt)
    before = _base_state(model)
    names = attach(model, {**_tune_cfg(method, base_ckpt, tiny_data, tmp_path).learner_spec()})
    learner0 = {n: p.detach().clone() for n, p in model.named_parameters() if n in names}
    cfg = _tune_cfg(method, base_ckpt, tiny_data, tmp_path)  # a LoopConfig for fit
    records = few_shot_records(tiny_data, "train", 4, 0)
    ds, val_ds = make_datasets(cfg, model, mcfg.image_size, train_records=records)
    fit(model, cfg, ds, val_ds, save=lambda p, e: p.mkdir(exist_ok=True), restore=lambda p: None)
    after = _base_state(model)
    assert sorted(after) == sorted(before)
    for k, v in before.items():  # every base tensor (weights and buffers), bit for bit
        assert torch.equal(v, after[k]), k
    changed = [
        n for n, p in model.named_parameters() if n in names and not torch.equal(p, learner0[n])
    ]
    assert changed, "the learner did not move"
    assert all(n.startswith("prompter.") or "lora_" in n for n in names)


@pytest.mark.parametrize("method", METHODS)
def test_tune_save_reload_reproduces_eval(method, base_ckpt, tiny_data, tmp_path):
    out = tune(_tune_cfg(method, base_ckpt, tiny_data, tmp_path / method))
    for name in ["best/adapter.safetensors", "best/adapter.yaml", "last/trainer_state.json",
                 "metrics.jsonl", "curves.png", "eval.json"]:  # fmt: skip
        assert (out / name).is_file(), name
    report = json.loads((out / "eval.json").read_text())
    meta = yaml.safe_load((out / "best" / "adapter.yaml").read_text())
    assert meta["method"] == method and meta["base"]["model"] == str(Path(base_ckpt).resolve())
    # a few KB, and a tiny fraction of the model
    assert report["adapter_bytes"] < 48 * 1024
    assert 0 < report["params"]["fraction"] < 0.005
    assert report["params"]["trainable"] == sum(
        t.numel() for t in load_file(str(out / "best" / "adapter.safetensors")).values()
    )
    seg = vlseg.load(str(base_ckpt), adapter=out / "best")
    assert seg.name == f"tiny-test+{method}"
    assert state_dict_sha256(seg.model) == meta["base"]["sha256"]
    base_model, _, _ = load_checkpoint(base_ckpt)
    base, adapted = _base_state(base_model), _base_state(seg.model)
    assert all(torch.equal(base[k], adapted[k]) for k in base)
    res = evaluate_served(seg, _test_set(seg, tiny_data), batch_size=4, limit=8)
    np.testing.assert_equal(res, report["results"])


def test_train_decoder_adapter_holds_the_decoder_and_resumes(base_ckpt, tiny_data, tmp_path):
    cfg = _tune_cfg("vpt", base_ckpt, tiny_data, tmp_path / "d", train_decoder=True, max_steps=2)
    out = tune(cfg)
    keys = set(load_file(str(out / "best" / "adapter.safetensors")))
    assert any(k.startswith("decoder.") for k in keys) and "prompter.tokens" in keys
    assert not any(k.startswith(("vision.visual.", "text.")) for k in keys)
    base_model, _, _ = load_checkpoint(base_ckpt)
    seg = vlseg.load(str(base_ckpt), adapter=out / "best")
    towers = ("vision.visual.", "text.", "logit_scale")
    base, adapted = _base_state(base_model), _base_state(seg.model)
    assert all(torch.equal(base[k], adapted[k]) for k in base if k.startswith(towers))
    assert not all(torch.equal(base[k], adapted[k]) for k in base if k.startswith("decoder."))
    res = evaluate_served(seg, _test_set(seg, tiny_data), batch_size=4, limit=8)
    np.testing.assert_equal(res, json.loads((out / "eval.json").read_text())["results"])
    # a second call with a larger budget continues from last/
    cfg.max_steps, cfg.epochs = 4, 2
    tune(cfg)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4]


def test_adapter_vocabulary_adds_to_the_base_vocabulary(tiny_data, tmp_path):
    torch.manual_seed(0)
    cfg = model_config("tiny-test")
    base = save_checkpoint(build_model(cfg), cfg, tmp_path / "base", extra={"vocabulary": ["zz"]})
    rc = cli_main(
        ["tune", "--config", str(REPO / "configs/tune/coop.yaml"), "--model", str(base),
         "--data", str(tiny_data), f"out={tmp_path / 'r'}", "limit=4", "max_steps=1",
         "batch_size=4", "num_workers=0", "val_limit=4", "eval_limit=4"]
    )  # fmt: skip
    assert rc == 0
    meta = yaml.safe_load((tmp_path / "r" / "best" / "adapter.yaml").read_text())
    assert "liver" in meta["vocabulary"].split() and "zz" not in meta["vocabulary"].split()
    seg = vlseg.load(base, adapter=tmp_path / "r" / "best")
    assert {"zz", "liver"} <= seg.vocabulary
    assert seg.segment(np.zeros((64, 64), np.uint8), "zz liver hepar").unfamiliar == ["hepar"]


def test_mismatched_base_is_refused(base_ckpt, tiny_data, tmp_path):
    out = tune(_tune_cfg("coop", base_ckpt, tiny_data, tmp_path / "t", eval_split=None))
    torch.manual_seed(1)
    cfg = model_config("tiny-test")
    other = save_checkpoint(build_model(cfg), cfg, tmp_path / "other")
    with pytest.raises(ValueError) as err:
        vlseg.load(str(other), adapter=out / "best")
    msg = str(err.value)
    want = yaml.safe_load((out / "best" / "adapter.yaml").read_text())["base"]
    assert want["sha256"] in msg and state_dict_sha256(load_checkpoint(other)[0]) in msg
    assert str(Path(base_ckpt).resolve()) in msg
    # without a model, the adapter's own base is loaded
    assert vlseg.load(adapter=out / "best").name == "tiny-test+coop"


def test_cli_tune_then_eval_with_adapter(tiny_data, tmp_path, capsys):
    rc = cli_main(
        ["tune", "--config", str(REPO / "configs/tune/vpt.yaml"), "--model", "tiny-test",
         "--data", str(tiny_data), f"out={tmp_path / 'r'}", "limit=4", "max_steps=2",
         "batch_size=4", "num_workers=0", "val_limit=4", "eval_limit=4", "deep=true"]
    )  # fmt: skip
    assert rc == 0
    # tiny-test has no weights: its random init was saved as the adapter's base
    meta = yaml.safe_load((tmp_path / "r" / "best" / "adapter.yaml").read_text())
    assert meta["base"]["model"] == str((tmp_path / "r" / "base").resolve())
    assert meta["learner"]["deep"] is True and meta["learner_shapes"]["depth"] == 2
    rc = cli_main(
        ["eval", "--adapter", str(tmp_path / "r" / "best"), "--data", str(tiny_data),
         "--split", "test", "--limit", "4", "--out", str(tmp_path / "m.json")]
    )  # fmt: skip
    assert rc == 0
    res = json.loads((tmp_path / "m.json").read_text())["results"]["test"]
    np.testing.assert_equal(res, json.loads((tmp_path / "r" / "eval.json").read_text())["results"])
    assert cli_main(["tune", "--model", "tiny-test", "n_ctxx=3"]) == 2
    assert "unknown override key 'n_ctxx'" in capsys.readouterr().err


def test_few_shot_draw_is_seeded_and_balanced(tiny_data):
    a = few_shot_records(tiny_data, "train", 4, seed=0)
    b = few_shot_records(tiny_data, "train", 4, seed=0)
    images = {r.image for r in a}
    assert [r.id for r in a] == [r.id for r in b] and len(images) == 4
    mods = [next(r.modality for r in a if r.image == img) for img in images]
    assert sorted(mods) == ["ct", "ct", "dermoscopy", "dermoscopy"]
    assert len({r.image for r in few_shot_records(tiny_data, "train", None, seed=0)}) > 4


# ---------------------------------------------------------------------------- CNN towers
@pytest.mark.parametrize("method", ["vpt", "maple", "lora", "cocoop"])
def test_cnn_vision_tower(method, cnn_cfg, tiny_data, tmp_path):
    torch.manual_seed(0)
    mcfg = model_config(cnn_cfg)
    base = save_checkpoint(build_model(mcfg), mcfg, tmp_path / "base")
    model, _, _ = load_checkpoint(base)
    assert model.vision.tower_kind == "timm_cnn"
    cfg = _tune_cfg(method, base, tiny_data, tmp_path / "run", max_steps=2, deep=False)
    out = tune(cfg)
    meta = yaml.safe_load((out / "best" / "adapter.yaml").read_text())
    if method in ("vpt", "maple"):  # auto: VPT's padding prompt, MaPLe's stage shift
        want = {"vpt": "pixels", "maple": "features"}[method]
        assert meta["learner_shapes"]["mode"] == want
    seg = vlseg.load(str(base), adapter=out / "best")
    if method == "vpt":  # the padding prompt is zero inside the border
        prompt = seg.model.prompter.vision_prompt(1)["prompt"]
        assert prompt.abs()[..., 4:-4, 4:-4].max() == 0 and prompt.abs().max() > 0
    if method == "lora":
        assert any("conv2.lora_A" in k for k in seg.model.state_dict())
    res = evaluate_served(seg, _test_set(seg, tiny_data), batch_size=4, limit=8)
    np.testing.assert_equal(res, json.loads((out / "eval.json").read_text())["results"])
    with pytest.raises(ValueError, match="token prompts need"):
        seg.model.vision(torch.zeros(1, 3, 64, 64), torch.zeros(1, 2, 8))


@pytest.mark.slow
def test_phantom_tiny_architecture_hf_text_tower(tiny_data, tmp_path):
    """phantom-tiny itself (resnet10t + frozen MiniLM), random init, CoOp and VPT at 128 px."""
    data = yaml.safe_load((REPO / "configs/models/phantom-tiny.yaml").read_text())
    mcfg = from_dict(ModelConfig, data)
    torch.manual_seed(0)
    model = build_model(mcfg).eval()
    assert model.text.tower_kind == "hf"
    # learned context inserted after [CLS] equals the same words typed into the prompt
    text = model.text
    ctx = text.embed_tokens(text.tokenize(["dark round"])["ids"])[:, 1:3]
    plain, joined = text.tokenize(["the liver"]), text.tokenize(["dark round the liver"])
    with torch.no_grad():
        got = text(plain["ids"], plain["mask"], ctx=ctx)
        want = text(joined["ids"], joined["mask"])
        deep = text(plain["ids"], plain["mask"], ctx=ctx, deep_ctx=[ctx] * 5)
    # as in test_context_equals_the_same_words...: bit-identical when measured, deep ctx moves 0.5
    torch.testing.assert_close(got["embedding"], want["embedding"], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(deep["embedding"], got["embedding"])
    base = save_checkpoint(model, mcfg, tmp_path / "base")
    for method in ("coop", "vpt"):
        out = tune(
            _tune_cfg(method, base, tiny_data, tmp_path / method, max_steps=2, deep=True)
            if method == "coop"
            else _tune_cfg(method, base, tiny_data, tmp_path / method, max_steps=2)
        )
        report = json.loads((out / "eval.json").read_text())
        assert report["adapter_bytes"] < 64 * 1024
        seg = vlseg.load(str(base), adapter=out / "best")
        res = evaluate_served(seg, _test_set(seg, tiny_data), batch_size=4, limit=8)
        np.testing.assert_equal(res, report["results"])


def _cnn_model(cnn_cfg):
    torch.manual_seed(0)
    model = build_model(model_config(cnn_cfg)).eval()
    model.requires_grad_(False)
    return model


def test_feature_prompt_shifts_one_stage_and_stops_the_backward_there(cnn_cfg):
    vision = _cnn_model(cnn_cfg).vision
    images = torch.randn(2, 3, 64, 64)
    base = vision(images)
    zero = vision(images, feature_prompt={2: torch.zeros(1, vision.stage_channels[2], 1, 1)})
    for a, b in zip(base["features"], zero["features"], strict=True):
        assert torch.equal(a, b)
    shift = torch.randn(1, vision.stage_channels[2], 1, 1, requires_grad=True)
    out = vision(images, feature_prompt={2: shift})
    for level in (0, 1):  # stages before the prompted one are untouched and carry no graph
        assert torch.equal(out["features"][level], base["features"][level])
        assert not out["features"][level].requires_grad
    for level in (2, 3):
        assert not torch.allclose(out["features"][level], base["features"][level])
    assert not torch.allclose(out["embedding"], base["embedding"])
    out["embedding"].sum().backward()
    assert shift.grad is not None and shift.grad.abs().sum() > 0
    # the hooks are gone afterwards
    assert torch.equal(vision(images)["features"][3], base["features"][3])


def test_feature_prompt_errors_name_the_problem(cnn_cfg, base_ckpt):
    vision = _cnn_model(cnn_cfg).vision
    images = torch.zeros(1, 3, 64, 64)
    with pytest.raises(ValueError, match="level 2 must be .* x 256 x h x w"):
        vision(images, feature_prompt={2: torch.zeros(1, 7, 1, 1)})
    with pytest.raises(ValueError, match="use 0..3"):
        vision(images, feature_prompt={5: torch.zeros(1, 7, 1, 1)})
    with pytest.raises(ValueError, match="use 1 x 1 .* or the stage's map size"):
        vision(images, feature_prompt={2: torch.zeros(1, 256, 3, 3)})
    vit, _, _ = load_checkpoint(base_ckpt)
    assert "features" not in vit.vision.prompt_kinds
    with pytest.raises(ValueError, match="feature prompts need a CNN tower"):
        vit.vision(torch.zeros(1, 3, 64, 64), feature_prompt={2: torch.zeros(1, 8, 1, 1)})
    with pytest.raises(ValueError, match="MaPLe form"):
        attach(_cnn_model(cnn_cfg), {"method": "vpt", "vpt_mode": "features"})


def test_maple_pixel_form_still_selectable_on_cnn_towers(cnn_cfg):
    model = _cnn_model(cnn_cfg)
    attach(model, {"method": "maple", "n_ctx": 2, "vpt_mode": "pixels"})
    assert model.prompter.hparams()["mode"] == "pixels"
    model = _cnn_model(cnn_cfg)
    attach(model, {"method": "maple", "n_ctx": 2, "maple_level": 3, "maple_rank": 4})
    shapes = model.prompter.hparams()
    assert (shapes["mode"], shapes["level"], shapes["channels"]) == ("features", 3, 512)
    # starts at zero: the model's outputs are the base model's
    assert model.prompter.vision_prompt(1)["feature_prompt"][3].abs().max() == 0


def test_prompted_model_is_safe_to_call_from_several_threads(cnn_cfg):
    """Prompts enter through forward hooks on shared modules: concurrent calls (the chat app
    serves two at once) must not see each other's hooks."""
    from concurrent.futures import ThreadPoolExecutor

    from vlseg.predictor import Segmenter

    model = _cnn_model(cnn_cfg)
    attach(model, {"method": "maple", "n_ctx": 2})
    with torch.no_grad():
        model.prompter.proj.bias.fill_(0.5)  # a visible shift
    seg = Segmenter(model, image_size=64)
    images = [np.random.default_rng(i).integers(0, 255, (64, 64), np.uint8) for i in range(8)]
    want = [seg.segment(im, "the liver").probs for im in images]
    seg2 = Segmenter(model, image_size=64)
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda im: seg2.segment(im, "the liver").probs, images * 3))
    for i, g in enumerate(got):
        # a leaked or missing hook moves these probabilities by ~0.1; 1e-5 (fp32 probabilities,
        # bit-identical when measured) allows concurrent calls another OpenMP partitioning
        np.testing.assert_allclose(g, want[i % len(images)], rtol=0, atol=1e-5)


def test_resumed_run_keeps_the_visual_prompt_form_it_started_with(cnn_cfg, tiny_data, tmp_path):
    """A MaPLe run begun with the pixel form (what "auto" meant on CNN towers before) resumes
    with it, though "auto" now picks the stage shift."""
    torch.manual_seed(0)
    mcfg = model_config(cnn_cfg)
    base = save_checkpoint(build_model(mcfg), mcfg, tmp_path / "base")
    first = _tune_cfg("maple", base, tiny_data, tmp_path / "run", max_steps=None, deep=False)
    first.vpt_mode, first.epochs, first.eval_split = "pixels", 1, None
    tune(first)
    resumed = _tune_cfg("maple", base, tiny_data, tmp_path / "run", max_steps=None, deep=False)
    resumed.epochs, resumed.eval_split = 2, None  # vpt_mode "auto"
    out = tune(resumed)
    meta = yaml.safe_load((out / "last" / "adapter.yaml").read_text())
    assert meta["learner_shapes"]["mode"] == "pixels" and meta["epoch"] == 1


def test_tuning_into_a_folder_of_another_method_is_refused(tmp_path):
    from safetensors.torch import save_file

    from vlseg.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, FORMAT
    from vlseg.config import save_yaml
    from vlseg.tuning import TuneConfig, tune

    last = tmp_path / "run" / "last"
    last.mkdir(parents=True)
    save_file({"x": torch.zeros(1)}, str(last / ADAPTER_WEIGHTS))
    save_yaml({"format": FORMAT, "method": "coop"}, last / ADAPTER_CONFIG)
    with pytest.raises(ValueError, match="holds a coop run.*this is a lora run"):
        tune(TuneConfig(method="lora", out=str(tmp_path / "run")))
    assert not (tmp_path / "run" / "tune_config.yaml").exists()
