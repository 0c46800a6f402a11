"""The wheel carries the package data (model configs, label sets, templates, embedded default) and
an install of it, away from the checkout, lists the model variants and loads the default."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What a fresh clone builds from (copied, so that the build leaves no build/ or egg-info here).
SOURCES = ["pyproject.toml", "setup.py", "README.md", "app.py"]
PACKAGES = ["vlseg", "prompts", "retrieval", "configs"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_file():
            shutil.copy2(REPO / name, src / name)
    junk = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for name in PACKAGES:
        shutil.copytree(REPO / name, src / name, ignore=junk)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
    cmd += ["--disable-pip-version-check", "-q", "-w", str(tmp / "dist"), str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (whl,) = (tmp / "dist").glob("vlseg-*.whl")
    return whl


def _files(root: Path, pattern: str) -> list[str]:
    found = sorted(p.relative_to(root).as_posix() for p in root.glob(pattern))
    assert found, f"nothing matches {root / pattern}"
    return found


def _stems(pattern: str) -> list[str]:
    return sorted(Path(p).stem for p in _files(REPO, pattern))


@pytest.mark.slow
def test_wheel_carries_package_data(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    # model configs: the top-level configs/models/ installs as vlseg/_configs/models/
    configs = [f"vlseg/_configs/models/{s}.yaml" for s in _stems("configs/models/*.yaml")]
    missing = sorted(set(configs) - names)
    assert not missing, f"model configs missing from {wheel.name}: {missing}"
    with zipfile.ZipFile(wheel) as zf:
        for name in configs:  # the same bytes as the checkout's files
            assert zf.read(name) == (REPO / "configs/models" / Path(name).name).read_bytes(), name
    data = _files(REPO, "prompts/labels/*.yaml") + _files(REPO, "prompts/templates/*.yaml")
    shipped = ("model.safetensors", "zeroshot.safetensors", "ood.safetensors", "config.yaml")
    data += [f"vlseg/weights/phantom-tiny/{f}" for f in shipped]
    # every module of the three packages (a subpackage left out of discovery would be missing)
    modules = [p for d in ("vlseg", "prompts", "retrieval") for p in _files(REPO, f"{d}/**/*.py")]
    missing = sorted(set(data + modules + ["app.py"]) - names)
    assert not missing, f"missing from {wheel.name}: {missing}"


@pytest.mark.slow
def test_installed_wheel_lists_models_and_loads_the_default(wheel, tmp_path):
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    run_dir = tmp_path / "elsewhere"
    run_dir.mkdir()
    script = (
        "import json, numpy as np, vlseg, vlseg.registry as r\n"
        "from prompts.templates import list_label_sets, list_templates\n"
        "seg = vlseg.load()\n"
        "res = seg.segment(np.zeros((48, 40), np.uint8), 'the liver')\n"
        "print(json.dumps({'file': vlseg.__file__, 'dirs': [str(d) for d in r.CONFIG_DIRS],\n"
        "  'models': vlseg.list_models(), 'labels': list_label_sets(),\n"
        "  'templates': list_templates(), 'shape': list(res.mask.shape)}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("VLSEG_CONFIG_PATH", None)  # only the wheel's own configs
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=run_dir,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    # imported from the unpacked wheel, not from the checkout or the editable install
    inside = lambda p: Path(p).resolve().is_relative_to(site.resolve())  # noqa: E731
    assert inside(got["file"]), got["file"]
    assert got["dirs"] and all(inside(d) for d in got["dirs"]), got["dirs"]
    assert got["models"] == _stems("configs/models/*.yaml")
    assert got["labels"] == _stems("prompts/labels/*.yaml")
    assert got["templates"] == _stems("prompts/templates/*.yaml")
    assert got["shape"] == [48, 40]
