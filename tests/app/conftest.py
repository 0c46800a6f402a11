"""Fixtures for the chat service tests: a tiny random model, phantom image files and volumes."""

import numpy as np
import pytest
import torch
from PIL import Image

from vlseg.predictor import Segmenter
from vlseg.registry import build_model, model_config
from vlseg.serving import ServingConfig


@pytest.fixture(scope="session")
def tiny_model():
    """A tiny random VLSegModel (shared; tests build their own Segmenter around it)."""
    torch.manual_seed(0)
    return build_model(model_config("tiny-test"))


@pytest.fixture
def tiny_seg(tiny_model):
    """A fresh Segmenter (own counters) on the tiny model; threshold 0.5."""
    return Segmenter(tiny_model, image_size=64, name="tiny-test")


@pytest.fixture
def eager_seg(tiny_model):
    """Threshold 0: every target is 'present' with a non-empty mask, to exercise area replies.
    Its serving settings carry default labels, as a trained checkpoint's do."""
    serving = ServingConfig(threshold=0.0, labels=["hepatic lesion", "normal liver", "nevus"])
    return Segmenter(tiny_model, image_size=64, serving=serving, name="tiny-test")


@pytest.fixture(scope="session")
def phantom_pngs(tmp_path_factory):
    """Two phantom PNGs (CT 96x80 crop, dermoscopy 64x64) and their sample objects."""
    from vlseg.data.phantoms import generate_sample

    d = tmp_path_factory.mktemp("chat-images")
    ct = generate_sample(seed=7, index=0, modality="ct", size=96)
    derm = generate_sample(seed=7, index=2, modality="dermoscopy", size=64)
    ct_path, derm_path = d / "ct.png", d / "derm.png"
    Image.fromarray(ct.image[:80]).save(ct_path)  # non-square on purpose
    Image.fromarray(derm.image).save(derm_path)
    return {"ct": ct_path, "derm": derm_path, "dir": d}


@pytest.fixture(scope="session")
def bad_files(tmp_path_factory):
    """Uploads that are not usable images: text, truncated PNG, empty file, a pixel bomb."""
    d = tmp_path_factory.mktemp("bad-uploads")
    (d / "notes.txt").write_text("not an image\n" * 10)
    good = d / "good.png"
    Image.fromarray(np.full((40, 40), 128, np.uint8)).save(good)
    (d / "truncated.png").write_bytes(good.read_bytes()[:60])
    (d / "empty.png").write_bytes(b"")
    # 20000 x 20000 = 4e8 pixels, but a tiny file: rejected from the header
    Image.new("1", (20000, 20000)).save(d / "bomb.png", optimize=True)
    return {p.stem: p for p in d.iterdir() if p.name != "good.png"}


@pytest.fixture(scope="session")
def phantom_volume():
    """A small CT phantom volume: 6 axial slices of 64 x 64 (int16 HU)."""
    from vlseg.data.phantoms.volume import render_ct_volume

    return render_ct_volume(7, 0, n_slices=6, size=64)


@pytest.fixture(scope="session")
def volume_files(phantom_volume, tmp_path_factory):
    """A CT phantom as NIfTI and as a zipped DICOM series, plus malformed volumes."""
    import zipfile

    nib = pytest.importorskip("nibabel")
    pytest.importorskip("pydicom")
    from vlseg.data.phantoms.volume import write_dicom_series, write_nifti

    d = tmp_path_factory.mktemp("chat-volumes")
    hu, spacing = phantom_volume.hu, phantom_volume.spacing
    write_nifti(d / "ct.nii.gz", hu, spacing, dtype=np.int16)
    series = write_dicom_series(d / "series", hu, spacing, shuffle_names=True, seed=3)
    with zipfile.ZipFile(d / "series.zip", "w") as z:
        for path in series:
            z.write(path, f"export/{path.name}")
    # malformed: a 4-D NIfTI holding two volumes
    four_d = np.stack([hu.transpose(2, 1, 0)] * 2, axis=-1)
    nib.save(nib.Nifti1Image(four_d, np.eye(4)), d / "two-volumes.nii.gz")
    # malformed: a series whose slices differ in size
    small = write_dicom_series(d / "small", hu[:2, :32, :32], spacing, seed=3)
    with zipfile.ZipFile(d / "mixed-sizes.zip", "w") as z:
        for path in series[:3] + small[:1]:
            z.write(path, f"{path.parent.name}-{path.name}")
    with zipfile.ZipFile(d / "no-dicom.zip", "w") as z:
        z.writestr("readme.txt", "not a DICOM file\n")
    (d / "not-a-zip.zip").write_bytes(b"PK but not really a zip archive")
    # one slice: read as a 2-D image, as before
    write_nifti(d / "one-slice.nii.gz", hu[:1], spacing, dtype=np.int16)
    return {p.name: p for p in d.iterdir() if p.is_file()}
