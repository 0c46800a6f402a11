"""Zero-shot classification under many label wordings: how much does the answer depend on how
the user phrases the classes?

    python bench/zeroshot_wording.py [--model M ...] [--data data/phantoms] [--split test]
        [--slices data/volslices] [--family data/family] [--json runs/bench/wording.json]

Four tasks, each with at least twelve wordings written the way clinicians and lay users type
labels (none of them copied from the phantom caption / referring-expression grammar, and none of
them shown to `vlseg align`'s paraphrase generator: ``tests/test_paraphrase.py`` checks that):

* ``modality``: CT vs dermoscopy, every image of the split; top-1 accuracy.
* ``dermoscopy``: the phantom's five lesion classes; balanced accuracy. Each wording set names all
  five classes in one style.
* ``ct_lesion``: hepatic lesion present vs absent on the CT images; AUROC of the "present" label's
  one-vs-rest log-odds (``vlseg.inference.ovr_log_odds``).
* ``spleen``: spleen visible at this slice level vs not, on axial slices of 3-D CT phantom volumes
  (``vlseg phantoms --volumes --as-slices``); AUROC as above. Volume slices rather than the
  randomized 2-D phantoms: the slices have the classic look the model was trained on, so the task
  measures the wording and the organ, not an appearance shift as well; in a volume the spleen
  ends abruptly (its cross-section is at least 0.45 of its largest), so "visible" is never a
  matter of a few pixels; and one patient gives slices with and without it.

Every wording is scored twice: with the template ``"{}"`` (the label as typed) and with the
model's own default templates (``serving.templates`` for the modality task, the template set of
the modality's ``serving.label_sets`` entry for the others). The classifier is the public one:
``Segmenter.class_embeddings(labels, templates)`` and ``vlseg.inference.zero_shot`` on the images'
zero-shot embeddings (the model's zero-shot head where it has one), exactly what
``Segmenter.classify`` computes.

Data (gitignored ``data/``):

    vlseg phantoms --out data/phantoms --n 3000 --seed 7 --heldout 300
    vlseg phantoms --volumes --as-slices --out data/volslices --n 200 --seed 31
    vlseg phantoms --family heldout --out data/family --n 300 --seed 21
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
import vlseg  # noqa: E402
from vlseg.data.manifest import read_manifest  # noqa: E402
from vlseg.data.phantoms.dermoscopy import CLASSES as DERM_CLASSES  # noqa: E402
from vlseg.inference import ovr_log_odds, zero_shot  # noqa: E402
from vlseg.metrics import balanced_accuracy, binary_auroc, top1_accuracy  # noqa: E402

# ----------------------------------------------------------------------------------------------
# Wordings. Each entry lists one label per class, in the order of the task's classes.

MODALITY = [  # (CT, dermoscopy)
    ("CT", "dermoscopy"),
    ("computed tomography of the belly", "skin photo under a dermatoscope"),
    ("a CT scan", "a dermatology photo"),
    ("cross-sectional abdominal imaging", "magnified skin surface image"),
    ("a CT of the abdomen", "a dermatoscopic picture"),
    ("radiology: abdominal CT", "dermatology: dermoscopy"),
    ("grayscale body scan", "color close-up of skin"),
    ("CAT scan of the tummy", "magnified picture of a mole"),
    ("axial CT image", "dermatoscope image"),
    ("abdomen CT", "skin dermoscopy"),
    ("contrast-enhanced CT", "epiluminescence microscopy"),
    ("a tomography slice", "photograph of the skin"),
    ("x-ray computed tomography", "skin surface microscopy"),
    ("CT image of internal organs", "photo of skin"),
]

DERMOSCOPY = [  # (melanoma, nevus, seborrheic keratosis, basal cell carcinoma, dermatofibroma)
    ("melanoma", "nevus", "seborrheic keratosis", "basal cell carcinoma", "dermatofibroma"),
    ("melanomas", "nevi", "seborrheic keratoses", "basal cell carcinomas", "dermatofibromas"),
    (
        "this looks like melanoma",
        "this looks like a regular mole",
        "this looks like a seborrheic keratosis",
        "this looks like basal cell carcinoma",
        "this looks like a dermatofibroma",
    ),
    (
        "diagnosis: melanoma",
        "diagnosis: benign nevus",
        "diagnosis: seborrheic keratosis",
        "diagnosis: basal cell carcinoma",
        "diagnosis: dermatofibroma",
    ),
    (
        "melanoma",
        "pigmented naevus",
        "seborrhoeic keratosis",
        "basal-cell carcinoma",
        "dermatofibroma",
    ),
    (
        "skin cancer melanoma",
        "an ordinary mole",
        "a barnacle-like age spot",
        "a pearly skin cancer",
        "a small firm skin bump",
    ),
    (
        "invasive cutaneous melanoma",
        "common acquired nevus",
        "seborrheic keratosis, a benign epidermal growth",
        "nodular basal cell carcinoma",
        "dermatofibroma, a benign dermal nodule",
    ),
    (
        "is it melanoma?",
        "is it a nevus?",
        "is it seborrheic keratosis?",
        "is it basal cell carcinoma?",
        "is it a dermatofibroma?",
    ),
    (
        "melanoma with an atypical network",
        "nevus with a regular network",
        "seborrheic keratosis with milia-like cysts",
        "basal cell carcinoma with arborizing vessels",
        "dermatofibroma with a central white patch",
    ),
    (
        "findings consistent with melanoma",
        "findings consistent with a nevus",
        "findings consistent with seborrheic keratosis",
        "findings consistent with basal cell carcinoma",
        "findings consistent with dermatofibroma",
    ),
    (
        "melanoma skin cancer",
        "benign mole (nevus)",
        "seborrheic keratosis (benign growth)",
        "basal cell carcinoma (skin cancer)",
        "dermatofibroma (harmless bump)",
    ),
    ("melanoma", "nevis", "seborrhoic keratosis", "basel cell carcinoma", "dermatofibroma"),
    (
        "melanoma (MM)",
        "nevus (NV)",
        "seborrheic keratosis (SK)",
        "basal cell carcinoma (BCC)",
        "dermatofibroma (DF)",
    ),
]

CT_LESION = [  # (lesion present, no lesion)
    ("liver metastases", "no liver metastases"),
    ("a tumor in the liver", "a liver without tumors"),
    ("liver with lesions", "liver without lesions"),
    ("hepatic metastasis", "unremarkable liver"),
    ("abnormal liver", "healthy liver"),
    ("cancer in the liver", "no cancer in the liver"),
    ("liver with masses", "liver with no masses"),
    ("nodules in the liver", "smooth uniform liver"),
    ("hepatocellular carcinoma", "no liver disease"),
    ("liver has spots", "liver looks clean"),
    ("positive for hepatic metastases", "negative for hepatic metastases"),
    ("CT showing liver cancer", "CT showing a healthy liver"),
    ("liver abnormality", "liver parenchyma is normal"),
]

SPLEEN = [  # (visible, not visible)
    ("spleen", "no spleen"),
    ("spleen visible", "spleen not visible"),
    ("a slice that cuts the spleen", "a slice that misses the spleen"),
    ("CT showing the spleen", "CT without the spleen"),
    ("the spleen is in view", "the spleen is out of view"),
    ("splenic tissue present", "no splenic tissue"),
    ("spleen seen", "spleen not seen"),
    ("includes the spleen", "does not include the spleen"),
    ("an image with the spleen", "an image without the spleen"),
    ("spleen present", "spleen absent"),
    ("a scan where you can see the spleen", "a scan where the spleen can't be seen"),
    ("the spleen shows up", "the spleen does not show up"),
]

TASKS = {
    "modality": {"wordings": MODALITY, "metric": "accuracy", "defaults": "generic"},
    "dermoscopy": {"wordings": DERMOSCOPY, "metric": "balanced_accuracy", "defaults": "dermoscopy"},
    "ct_lesion": {"wordings": CT_LESION, "metric": "auroc", "defaults": "ct"},
    "spleen": {"wordings": SPLEEN, "metric": "auroc", "defaults": "ct"},
}
TARGETS = {  # issue 14: per task, (mean, worst) to reach; None where none was set
    "modality": (0.97, 0.90),
    "dermoscopy": (0.85, 0.75),
    "ct_lesion": (0.90, None),
    "spleen": (None, None),
}
# The two wordings quoted in issue 14 (they borrow the caption grammar, so they are printed as a
# reference and kept out of the means).
ISSUE_MODALITY = [
    ("an abdominal CT scan", "a dermoscopy photo of a skin lesion"),
    ("a CT slice of the abdomen", "a dermoscopy image"),
]


def all_wordings() -> list[str]:
    """Every label string of the bench (for the paraphrase generator's unseen-wording test)."""
    return sorted({w for task in TASKS.values() for labels in task["wordings"] for w in labels})


# ----------------------------------------------------------------------------------------------
# Data


def image_rows(data: str, split: str) -> list[dict]:
    """One row per image of a split: path, modality, label, and the positive targets."""
    rows: dict[Path, dict] = {}
    for r in read_manifest(data, split):
        row = rows.setdefault(
            r.image, {"image": r.image, "modality": r.modality, "label": r.label, "present": set()}
        )
        if r.positive and r.target:
            row["present"].add(r.target)
    return list(rows.values())


def task_data(task: str, rows: list[dict]) -> tuple[list[int], np.ndarray] | None:
    """(row indices, class ids) of the images a task is scored on, or None when it has none."""
    if task == "modality":
        idx = [i for i, r in enumerate(rows) if r["modality"] in ("ct", "dermoscopy")]
        y = [0 if rows[i]["modality"] == "ct" else 1 for i in idx]
    elif task == "dermoscopy":
        idx = [i for i, r in enumerate(rows) if r["label"] in DERM_CLASSES]
        y = [DERM_CLASSES.index(rows[i]["label"]) for i in idx]
    elif task == "ct_lesion":  # slices below the liver say nothing about it
        idx = [
            i
            for i, r in enumerate(rows)
            if r["label"] in ("hepatic lesion", "normal liver") and "liver" in r["present"]
        ]
        y = [0 if rows[i]["label"] == "hepatic lesion" else 1 for i in idx]
    else:  # spleen, on CT images
        idx = [i for i, r in enumerate(rows) if r["modality"] == "ct"]
        y = [0 if "spleen" in rows[i]["present"] else 1 for i in idx]
    if not idx or len(set(y)) < 2:
        return None
    return idx, np.array(y)


def score(task: str, logits: np.ndarray, y: np.ndarray) -> float:
    metric = TASKS[task]["metric"]
    if metric == "accuracy":
        return top1_accuracy(logits, y)
    if metric == "balanced_accuracy":
        return balanced_accuracy(logits, y)
    return binary_auroc(ovr_log_odds(logits)[:, 0], y == 0)  # class 0 is the "present" label


@torch.no_grad()
def embed(seg, paths: list[Path], batch: int = 64) -> np.ndarray:
    return np.concatenate(
        [
            seg.encode(list(paths[s : s + batch])).zeroshot_embedding
            for s in range(0, len(paths), batch)
        ]
    )


def default_templates(seg, task: str) -> str:
    """The model's own template set for a task (falls back to the bench's default)."""
    serving = seg.serving
    if task == "modality":
        return serving.templates or TASKS[task]["defaults"]
    modality = "dermoscopy" if task == "dermoscopy" else "ct"
    entry = (serving.label_sets or {}).get(modality) or {}
    return entry.get("templates") or TASKS[task]["defaults"]


def evaluate(seg, sources: dict[str, tuple[str, str]], tasks: list[str]) -> list[dict]:
    """Rows (dataset, task, templates, per-wording scores) for one model."""
    out = []
    for dname, (data, split) in sources.items():
        rows = image_rows(data, split)
        wanted = {t: task_data(t, rows) for t in tasks}
        wanted = {t: v for t, v in wanted.items() if v is not None}
        if not wanted:
            continue
        used = sorted({i for idx, _ in wanted.values() for i in idx})
        emb_used = embed(seg, [rows[i]["image"] for i in used])
        where = {i: k for k, i in enumerate(used)}
        for task, (idx, y) in wanted.items():
            emb = emb_used[[where[i] for i in idx]]
            for tname, templates in (("as typed", ["{}"]), ("default", None)):
                temps = templates or default_templates(seg, task)
                scores = []
                for labels in TASKS[task]["wordings"]:
                    classes = seg.class_embeddings(list(labels), temps)
                    logits = np.stack([r.logits for r in zero_shot(emb, classes, labels)])
                    scores.append(score(task, logits, y))
                row = {
                    "dataset": dname,
                    "task": task,
                    "templates": tname if templates else f"default ({temps})",
                    "metric": TASKS[task]["metric"],
                    "n": len(y),
                    "class_counts": np.bincount(y).tolist(),
                    "mean": float(np.mean(scores)),
                    "worst": float(np.min(scores)),
                    "best": float(np.max(scores)),
                    "scores": {
                        " | ".join(lab): s
                        for lab, s in zip(TASKS[task]["wordings"], scores, strict=True)
                    },
                }
                if task == "modality":
                    row["issue_wordings"] = {}
                    for labels in ISSUE_MODALITY:
                        classes = seg.class_embeddings(list(labels), temps)
                        logits = np.stack([r.logits for r in zero_shot(emb, classes, labels)])
                        row["issue_wordings"][" | ".join(labels)] = score(task, logits, y)
                out.append(row)
    return out


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", help="model name or checkpoint dir (repeatable)")
    p.add_argument("--data", default="data/phantoms")
    p.add_argument("--split", default="test")
    p.add_argument("--slices", default="data/volslices", help="volume-slice dataset ('' skips)")
    p.add_argument("--family", default="", help="held-out family dataset (its test split)")
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--verbose", action="store_true", help="print every wording's score")
    p.add_argument("--json", help="write all rows (with per-wording scores) here")
    args = p.parse_args()
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise SystemExit(f"unknown task(s) {unknown}; available: {', '.join(TASKS)}")
    sources = {"phantoms": (args.data, args.split)}
    if args.slices:
        sources["volume slices"] = (args.slices, args.split)
    if args.family:
        sources["held-out family"] = (args.family, "test")
    models = args.model or ["phantom-tiny"]

    print("command:", shlex.join([Path(sys.executable).name, *sys.argv]))
    print(f"cpu: {cpu_name()}; torch threads: {torch.get_num_threads()}")
    t0 = time.time()
    results = {}
    for m in models:
        seg = vlseg.load(m, device="cpu")
        results[m] = evaluate(seg, sources, tasks)
    wall = time.time() - t0

    groups = defaultdict(dict)
    for m, rows in results.items():
        for r in rows:
            groups[(r["dataset"], r["task"], r["templates"].split(" (")[0])][m] = r
    head = " | ".join(f"{m} mean / worst" for m in models)
    print(f"\n| data | task (metric, n) | templates | {head} | target mean / worst |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in models) + " | --- |")
    for (dname, task, _), per in groups.items():
        any_row = next(iter(per.values()))
        tm, tw = TARGETS[task]
        target = f"{tm if tm else '-'} / {tw if tw else '-'}"
        cells = " | ".join(
            f"{per[m]['mean']:.3f} / {per[m]['worst']:.3f}" if m in per else "-" for m in models
        )
        print(
            f"| {dname} | {task} ({any_row['metric']}, n={any_row['n']}) | {any_row['templates']} "
            f"| {cells} | {target} |"
        )
    if args.verbose:
        for m, rows in results.items():
            for r in rows:
                print(f"\n{m} / {r['dataset']} / {r['task']} / {r['templates']}:")
                for wording, s in r["scores"].items():
                    print(f"  {s:.3f}  {wording}")
                for wording, s in r.get("issue_wordings", {}).items():
                    print(f"  {s:.3f}  {wording}  (issue 14 reference, not in the mean)")
    print(f"\n{sum(len(t['wordings']) for t in TASKS.values())} wordings; wall {wall:.0f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        meta = {"command": sys.argv, "cpu": cpu_name(), "threads": torch.get_num_threads()}
        Path(args.json).write_text(
            json.dumps({"meta": {**meta, "wall_s": wall}, "results": results}, indent=1)
        )
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
