"""Datasets of (image, mask, referring expression) records: read, validate, serve to torch.

One module per concern:

- :mod:`~vlseg.data.manifest.records`: :class:`Record` and the JSON object schema;
- :mod:`~vlseg.data.manifest.formats`: the JSONL and medvlsm layouts, :func:`read_manifest`,
  :func:`write_manifest`;
- :mod:`~vlseg.data.manifest.validation`: :func:`find_problems` / :func:`validate_records`;
- :mod:`~vlseg.data.manifest.dataset`: :class:`ManifestDataset`, :func:`collate` and
  :func:`load_record_target` (a record's mask at the original resolution, for evaluation).

Two on-disk formats are read by :func:`read_manifest`.

**JSONL** (``manifest.jsonl``), one record per line, paths relative to the manifest's directory
(absolute paths allowed)::

    {"id": "ct_0001", "image": "images/ct_0001.png", "mask": "masks/ct_0001_lesion.png",
     "text": "the hepatic lesion", "label": "lesion", "modality": "ct", "spacing": [0.7, 0.7],
     "split": "train"}
    {"image": "images/ct_0001.png", "mask": null, "prompts": ["the renal cyst"], "split": "train"}

``text`` is one expression; ``prompts`` is a list of expressions or a dict of named ones (values
a string or a list of strings). ``mask: null`` (or no ``mask`` key) is a negative: the expression
refers to nothing in the image and the target is an empty mask. ``positive`` defaults to
``mask is not null``. Optional keys: ``id``, ``label``, ``modality``, ``spacing`` ([row, col] mm),
``split``, ``positive``, ``target``, ``caption``, ``slice`` (NIfTI slice / DICOM frame). Any
other key is kept in :attr:`Record.extra`.

**medvlsm** (github.com/naamiinepal/medvlsm, checked against its ``DATASETS.MD``,
``src/datamodules/datasets/image_text_mask.py`` and the shipped ``*_json_outputs/*.json``)::

    <dataset>/anns/{train,val,test}.json   JSON list of records (CAMUS also has testA.json, ...)
    <dataset>/images/<img_name>
    <dataset>/masks/<mask_name>            binary, 0 background / 255 foreground

A record is ``{"img_name": "x.png", "mask_name": "x.png", "prompts": {"p0": "", "p1": "...",
"p2": ["...", "..."], ...}}``, often with ``segment_id``, ``bbox``, ``cat``, ``sentences`` and
``sentences_num`` too (kept in ``extra``; ``segment_id`` becomes the id). A prompt value is a
string or a list of alternatives; ``p0`` is the empty prompt medvlsm uses for its no-text
baseline, so empty dict prompts are skipped. medvlsm's "random" prompt excludes ``p0``; here
empty prompts never enter the list, so "random" matches it. Images without the target (e.g. BUSI
"normal") have an all-zero mask file, so they load as positives with an empty mask: set
``positive`` yourself if the presence head should see them as negatives.
"""

from vlseg.data.manifest.dataset import (
    PROMPT_MODES,
    ManifestDataset,
    collate,
    load_record_target,
)
from vlseg.data.manifest.formats import captioned_images, read_manifest, write_manifest
from vlseg.data.manifest.records import (
    KNOWN_SPLITS,
    MANIFEST_NAME,
    Record,
    record_from_dict,
    record_to_dict,
)
from vlseg.data.manifest.validation import find_problems, validate_records

__all__ = [
    "KNOWN_SPLITS",
    "MANIFEST_NAME",
    "PROMPT_MODES",
    "ManifestDataset",
    "Record",
    "captioned_images",
    "collate",
    "find_problems",
    "load_record_target",
    "read_manifest",
    "record_from_dict",
    "record_to_dict",
    "validate_records",
    "write_manifest",
]
