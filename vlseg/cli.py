"""The ``vlseg`` command line: one subcommand per pipeline stage."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence


def _cmd_phantoms(args: argparse.Namespace) -> int:
    from functools import partial

    from vlseg.data.phantoms.sheet import contact_sheet

    if args.out is None and args.preview is None:
        raise SystemExit("vlseg phantoms: give --out DIR (a dataset) and/or --preview SHEET.png")
    if args.volumes:
        return _phantom_volumes(args)
    if args.dicom or args.slices is not None:
        raise SystemExit("vlseg phantoms: --slices and --dicom describe 3-D volumes; add --volumes")
    common = {"size": args.size, "prompts_per_target": args.prompts}
    if args.family == "heldout":  # evaluation only: splits val and test
        from vlseg.data.heldout_family import generate_family_sample, write_family_dataset

        if args.appearance != "classic" or args.heldout:
            raise SystemExit(
                "vlseg phantoms: --family heldout has its own appearance and no test_heldout "
                "split; drop --appearance/--heldout"
            )
        generate, write = generate_family_sample, write_family_dataset
    else:
        from vlseg.data.phantoms import generate_sample, write_dataset

        generate = partial(generate_sample, appearance=args.appearance)
        write = partial(
            write_dataset, n_heldout=args.heldout, workers=args.workers, appearance=args.appearance
        )
    if args.out is not None:
        out = write(
            args.out,
            args.n,
            seed=args.seed,
            modality=args.modality,
            overwrite=args.overwrite,
            progress=not args.quiet,
            **common,
        )
        print(f"wrote {out}/manifest.jsonl")
    if args.preview is not None:
        mods = ["ct", "dermoscopy"] if args.modality == "all" else [args.modality]
        samples = [
            generate(seed=args.seed, index=i, modality=mods[i % len(mods)], **common)
            for i in range(min(args.n, args.preview_count))
        ]
        print(f"wrote {contact_sheet(samples, args.preview)}")
    return 0


def _phantom_volumes(args: argparse.Namespace) -> int:
    """``vlseg phantoms --volumes``: 3-D CT phantoms (NIfTI volumes and masks, optional DICOM)."""
    from vlseg.data.phantoms.sheet import contact_sheet
    from vlseg.data.phantoms.volume import render_ct_volume, write_volume_dataset

    if args.modality == "dermoscopy":
        raise SystemExit(
            "vlseg phantoms: --volumes renders CT volumes only; drop --modality dermoscopy"
        )
    if args.family != "training" or args.appearance != "classic":
        raise SystemExit(
            "vlseg phantoms: --volumes has the classic appearance of the training family only; "
            "drop --family/--appearance"
        )
    n_slices = 32 if args.slices is None else args.slices
    if args.as_slices:
        from vlseg.data.phantoms.volume import write_slice_dataset

        if args.dicom or args.heldout:
            raise SystemExit(
                "vlseg phantoms: --as-slices writes regular 2-D slices; drop --dicom/--heldout"
            )
        if args.out is not None:
            out = write_slice_dataset(
                args.out,
                args.n,
                args.seed,
                n_slices=16 if args.slices is None else args.slices,
                size=args.size,
                prompts=args.prompts,
                overwrite=args.overwrite,
                quiet=args.quiet,
                workers=args.workers,
            )
            print(f"wrote {out}/manifest.jsonl")
        return 0
    if args.out is not None:
        out = write_volume_dataset(
            args.out,
            args.n,
            args.seed,
            n_slices=n_slices,
            size=args.size,
            prompts=args.prompts,
            heldout=args.heldout or 0,
            overwrite=args.overwrite,
            quiet=args.quiet,
            dicom=args.dicom,
            workers=args.workers,
        )
        print(f"wrote {out}/manifest.jsonl")
    if args.preview is not None:
        samples = [
            render_ct_volume(
                args.seed, i, n_slices=n_slices, size=args.size, prompts_per_target=args.prompts
            ).slice_sample(n_slices // 2, prompts_per_target=args.prompts)
            for i in range(min(args.n, args.preview_count))
        ]
        print(f"wrote {contact_sheet(samples, args.preview)}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from vlseg.config import TrainConfig, _field_names, apply_overrides, from_dict, load_yaml
    from vlseg.engine import train

    data = load_yaml(args.config) if args.config else {}
    data = apply_overrides(data, args.overrides, valid=_field_names(TrainConfig))
    cfg = from_dict(TrainConfig, data, where=args.config or "overrides")
    out = train(cfg)
    print(f"run directory: {out} (best checkpoint: {out / 'best'})")
    return 0


def _cmd_align(args: argparse.Namespace) -> int:
    from vlseg.align import align, load_align_config

    out = align(load_align_config(args.config, args.overrides))
    print(f"run directory: {out} (aligned checkpoint: {out / 'best'})")
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from vlseg.tuning import load_tune_config, tune

    cfg = load_tune_config(
        args.config, args.overrides, model=args.model, data=args.data, method=args.method
    )
    out = tune(cfg)
    print(f"run directory: {out} (adapter: {out / 'best'}; use it with --adapter {out / 'best'})")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    import numpy as np

    from vlseg.data.io import write_json
    from vlseg.data.manifest import ManifestDataset, read_manifest
    from vlseg.evaluation import evaluate_served, evaluate_volumes, is_volume_record
    from vlseg.predictor import load
    from vlseg.vocabulary import unfamiliar

    _writable_file(args.out)
    seg = load(args.model, adapter=args.adapter)
    seg.referring = not args.no_referring
    if args.no_refine:
        seg.serving.refine = None
    seg.strip_requests = not args.as_typed
    vis = seg.model.vision
    results = {}
    for split in args.split:
        records = read_manifest(args.data, split)
        volumes = [is_volume_record(r) for r in records]
        if any(volumes):
            if not all(volumes):
                raise SystemExit(
                    f"vlseg eval: split {split!r} mixes volume and 2-D records; score them as "
                    "separate splits or manifests"
                )
            r = results[split] = evaluate_volumes(seg, records, limit=args.limit, progress=True)
            print(
                f"{split} (volumes): 3-D dice {r['dice']:.4f}  HD95 {r['hd95_mm']:.2f} mm  "
                f"volume error {100 * r['volume_error']:.1f}%  longest diameter error "
                f"{r['diameter_error_mm']:.2f} mm  presence AUROC "
                f"{r.get('presence_auroc', float('nan')):.4f}  present on negatives "
                f"{100 * r['present_on_negatives']:.1f}%  (n={int(r['n'])} positive / "
                f"{int(r['n_all'])})"
            )
            for key in sorted(k for k in r if k.startswith("dice/")):
                print(f"  {key[5:]}: dice {r[key]:.4f}")
            continue
        ds = ManifestDataset(
            args.data, split, image_size=seg.image_size, mean=vis.mean, std=vis.std, prompt="all"
        )
        flags: list[bool] = []

        def flag(record, res, target, positive, flags=flags) -> None:
            if res.unfamiliar:  # named the unfamiliar word and did not claim "present"
                flags.append(res.verdict != "present")

        results[split] = evaluate_served(
            seg,
            ds,
            batch_size=args.batch_size,
            limit=args.limit,
            progress=True,
            on_item=flag,
            vocabulary=seg.vocabulary,
            referring=seg.referring,
            ood=seg.ood,
        )
        r = results[split]
        if flags:
            r["unfamiliar_flagged"] = float(np.mean(flags))
            r["n_unfamiliar_answers"] = float(len(flags))
        print(
            f"{split}: dice {r['dice']:.4f}  mIoU {r['mIoU']:.4f}  oIoU {r['oIoU']:.4f}  "
            f"P@0.5 {r['prec@0.5']:.3f}  presence AUROC {r['presence_auroc']:.4f}  "
            f"(n={int(r['n'])} positive / {int(r['n_all'])})"
        )
        if seg.vocabulary is not None:  # how much of the split is worded unlike training
            prompts = [t for rec in ds.records for t in rec.prompts]
            r["unfamiliar_prompts"] = sum(bool(unfamiliar(t, seg.vocabulary)) for t in prompts)
            r["unfamiliar_fraction"] = r["unfamiliar_prompts"] / max(1, len(prompts))
            if r["unfamiliar_prompts"]:
                print(
                    f"  {r['unfamiliar_prompts']} of {len(prompts)} prompts "
                    f"({100 * r['unfamiliar_fraction']:.0f}%) use words the model was not "
                    "trained on"
                )
            if flags:
                print(
                    f"  answers to them that name the word and do not claim 'present': "
                    f"{100 * r['unfamiliar_flagged']:.1f}% of {len(flags)}"
                )
    if args.out:
        write_json(
            args.out,
            {
                "model": seg.name,
                "model_arg": None if args.model is None else str(args.model),
                "adapter": None if args.adapter is None else str(args.adapter),
                "data": str(args.data),
                "splits": list(args.split),
                "limit": args.limit,
                "referring": seg.referring,
                "strip_requests": seg.strip_requests,
                "refine": seg.serving.refine,
                "results": results,
            },
        )
        print(f"wrote {args.out}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from vlseg.data.io import save_mask_png
    from vlseg.predictor import load

    if (args.data is None) == (args.image is None):
        raise SystemExit("vlseg predict: give --image IMG --text T, or --data MANIFEST")
    if args.data is not None:
        _writable_dir(args.out)
    if args.image is not None and _is_dicom_seg_path(args.out):
        _check_dicom_seg_input(args.image)  # before the model loads and the volume is encoded
    if args.image is not None and args.out and not str(args.out).lower().endswith(".png"):
        from pathlib import Path

        from vlseg.predictor import is_volume

        if Path(args.image).exists() and not is_volume(args.image):  # before the model loads
            raise SystemExit(
                f"vlseg predict: {args.image} is a 2-D image, so its mask is a PNG; give --out "
                "a .png path, e.g. --out mask.png (NIfTI and DICOM SEG masks are written for "
                "volumes)"
            )
    device = None
    if "LOCAL_RANK" in os.environ:  # under torchrun: one GPU per rank when there are GPUs
        import torch

        if torch.cuda.is_available():
            device = f"cuda:{int(os.environ['LOCAL_RANK']) % torch.cuda.device_count()}"
    seg = load(args.model, adapter=args.adapter, device=device)
    if args.data is not None:
        from vlseg.batch import predict_manifest

        res = predict_manifest(
            seg,
            args.data,
            args.out,
            split=args.split,
            text=args.text,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            progress=not args.quiet,
        )
        print(
            f"answered {res['records']} records on {res['images']} images "
            f"({res['skipped']} answered before); results in {args.out}/results-rank*.jsonl"
        )
        return 0
    if not args.text:
        raise SystemExit("vlseg predict: --image needs --text")
    from vlseg.predictor import is_volume

    if is_volume(args.image):
        return _predict_volume(seg, args)
    res = seg.segment(args.image, args.text)
    save_mask_png(res.mask, args.out)
    area = f"{res.area_px} px" + (f" = {res.area_mm2:.1f} mm^2" if res.area_mm2 else "")
    verdict = {
        "present": f"found: {area}, {res.n_components} component(s)",
        "absent": "not found",
        "unsure": f"unsure (tentative outline: {area})",
        "out-of-domain": "no answer: the image is unlike what this model was trained on",
    }[res.verdict]
    print(f"{args.text!r}: {verdict} (presence {res.score:.3f}); mask written to {args.out}")
    if res.unfamiliar:
        print(
            f"note: the model was not trained on {', '.join(map(repr, res.unfamiliar))}; the "
            "answer may not reflect it; if it looks wrong, rephrase with common terms",
            file=sys.stderr,
        )
    return 0


def _is_dicom_seg_path(out: str) -> bool:
    return str(out).lower().endswith(".dcm")


def _check_dicom_seg_input(image: str) -> None:
    """``--out mask.dcm`` (a DICOM SEG) needs a DICOM series (a folder or .zip) and highdicom."""
    from pathlib import Path

    from vlseg.data.dicom_seg import SEG_NEEDS_SERIES
    from vlseg.data.volume_io import is_volume_source

    path = Path(image)
    if not path.exists():
        return  # the usual "no such file" comes later
    if not (path.is_dir() or path.name.lower().endswith(".zip")):
        out = "mask.nii.gz" if is_volume_source(path) else "mask.png"
        raise SystemExit(
            f"vlseg predict: {SEG_NEEDS_SERIES} (a folder or .zip of one); {image} is not one, "
            f"so use --out {out}"
        )
    try:
        import highdicom  # noqa: F401
    except ImportError:
        raise SystemExit(
            "vlseg predict: writing a DICOM SEG needs the 'highdicom' package; install it with "
            "`pip install vlseg[medical]`, or use --out mask.nii.gz"
        ) from None


def _predict_volume(seg, args: argparse.Namespace) -> int:
    """``vlseg predict --image VOLUME --text T --out mask.nii.gz`` (or ``mask.dcm``, a DICOM SEG,
    for a DICOM series): a 3-D answer."""
    from tqdm import tqdm

    from vlseg.data.volume_io import write_mask_nifti

    dicom_seg = _is_dicom_seg_path(args.out)
    if not dicom_seg and not str(args.out).lower().endswith((".nii", ".nii.gz")):
        raise SystemExit(
            f"vlseg predict: {args.image} is a volume, so the mask is a volume too; give --out "
            "a .nii.gz path, e.g. --out mask.nii.gz (or mask.dcm, a DICOM SEG, for a DICOM "
            "series)"
        )
    with tqdm(desc="encoding slices", unit="slice", disable=args.quiet) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        encoded = seg.encode_volume(args.image, progress=progress)
    res = seg.segment(encoded, args.text)
    if dicom_seg:
        from vlseg.data.dicom_seg import write_mask_dicom_seg

        try:
            write_mask_dicom_seg(args.out, res.mask, encoded.volume, label=args.text)
        except ValueError as exc:
            raise SystemExit(f"vlseg predict: {exc}") from None
    else:
        write_mask_nifti(args.out, res.mask, encoded.volume)
    print(f"{res.summary()}; mask written to {args.out}")
    for i, ((long, short), k) in enumerate(
        zip(res.diameters_mm, res.diameter_slices, strict=True), 1
    ):
        vol = res.component_volumes_ml[i - 1]
        unit, vunit = ("mm", "mL") if res.spacing else ("px", "voxels")
        print(f"  finding {i}: {vol:.2f} {vunit}, {long:.1f} x {short:.1f} {unit} on slice {k}")
    volume = encoded.volume
    if res.diameters_mm and (volume.resliced or volume.first_slice_end):
        where = [f"slices are axial (its {volume.resliced} images resliced)"] * bool(
            volume.resliced
        )
        if volume.first_slice_end:
            where.append(f"slice 0 is the most {volume.first_slice_end}")
        print(f"  ({'; '.join(where)})")
    if res.unfamiliar:
        print(
            f"note: the model was not trained on {', '.join(map(repr, res.unfamiliar))}",
            file=sys.stderr,
        )
    return 0


def _labels(spec: str) -> tuple[list[str], list[str]]:
    """``a,b,c``, a label-set name or a label-set YAML path -> (label codes, class names used in
    prompts)."""
    from prompts import list_label_sets, load_labels

    if "," not in spec and (spec in list_label_sets() or spec.endswith((".yaml", ".yml"))):
        table = load_labels(spec)
        return list(table), list(table.values())
    items = [s.strip() for s in spec.split(",") if s.strip()]
    if len(items) < 2:  # one word: most likely a mistyped label-set name
        raise SystemExit(
            f"--labels {spec!r} is neither two or more comma-separated labels nor a label set; "
            f"label sets: {', '.join(list_label_sets())} (or a YAML file of code: name)"
        )
    return items, items


def _model_labels(seg, spec: str | None, templates: str | None, modality: str | None = None):
    """(codes, class names, templates): from ``--labels`` or else the checkpoint's own label set
    for ``modality`` (``serving.label_sets``) or its default labels."""
    if spec is not None:
        codes, names = _labels(spec)
        return codes, names, templates
    sets = seg.serving.label_sets
    if modality is not None and modality in sets:
        entry = sets[modality]
        table = entry["labels"]
        codes, names = (
            _labels(table) if isinstance(table, str) else (list(table), list(table.values()))
        )
        return codes, names, templates or entry.get("templates")
    if modality is None and seg.serving.labels:
        return (
            list(seg.serving.labels),
            list(seg.serving.labels),
            templates or seg.serving.templates,
        )
    known = ", ".join(sorted(sets)) or "none"
    raise SystemExit(
        f"error: {seg.name} records no label set for modality {modality!r} (recorded: {known}); "
        "pass --labels a,b,c, a label-set name or a YAML file"
    )


def _cmd_classify(args: argparse.Namespace) -> int:
    from vlseg.predictor import load

    seg = load(args.model, adapter=args.adapter)
    codes, names, templates = _model_labels(seg, args.labels, args.templates)
    res = seg.classify(args.image, names, templates)
    for code, p in sorted(zip(codes, res.probs, strict=True), key=lambda kv: -kv[1]):
        print(f"{p:7.3f}  {code}")
    return 0


def _cmd_eval_classify(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vlseg.data.io import write_json
    from vlseg.predictor import load
    from vlseg.zeroshot import evaluate_classification, image_labels, plot_confusion

    _writable_dir(args.out)
    seg = load(args.model, adapter=args.adapter)
    codes, names, templates = _model_labels(seg, args.labels, args.templates, args.modality)
    images, labels = image_labels(args.data, args.split, args.modality)
    res = evaluate_classification(
        seg, images, labels, codes, prompts=names, templates=templates, progress=True
    )
    res.pop("probs")
    print(
        f"n={res['n']}  top-1 {res['top1']:.4f}  balanced accuracy "
        f"{res['balanced_accuracy']:.4f}  macro AUROC {res['macro_auroc']:.4f}"
    )
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "classification.json", res)
        plot_confusion(res["confusion"], codes, out / "confusion.png")
        print(f"wrote {out / 'classification.json'} and {out / 'confusion.png'}")
    return 0


def _cmd_index_build(args: argparse.Namespace) -> int:
    from vlseg.indexing import build_index
    from vlseg.predictor import load

    out = build_index(load(args.model), args.data, args.out, split=args.split, kind=args.kind)
    print(f"wrote {out / 'images'} and {out / 'texts'}")
    return 0


INDEX_MODEL_HELP = "default: the model that built the index (another one is refused)"


def _index_model(model: str | None, index: str):
    """The model to query an index with: ``model``, or by default the one that built it."""
    from vlseg.indexing import check_index_model, read_model_record
    from vlseg.predictor import load

    rec = read_model_record(index)
    if model is None and rec and not rec.get("known", True):
        raise ValueError(
            f"index {index} was built by a model made in code ({rec['name']!r}), which cannot "
            "be reloaded from the index: pass --model with a checkpoint of the same weights"
        )
    seg = load(rec["model"], adapter=rec.get("adapter")) if model is None and rec else load(model)
    check_index_model(seg, index)
    return seg


def _cmd_search(args: argparse.Namespace) -> int:
    from vlseg.indexing import load_index

    if (args.text is None) == (args.image is None):
        raise ValueError("give exactly one of --text or --image")
    seg = _index_model(args.model, args.index)
    images, _ = load_index(args.index)
    query = seg.text_embedding([args.text]) if args.text else seg.image_embedding(args.image)
    hits = images.search_meta(query.reshape(1, -1), args.k)[0]
    for rank, h in enumerate(hits, 1):
        print(f"{rank:2d}. {h['score']:.3f}  {h['image']}  | {h['caption']}")
    if args.sheet:
        _hit_sheet(hits, args.sheet)
        print(f"wrote {args.sheet}")
    return 0


def _hit_sheet(hits: list[dict], path: str) -> None:
    from PIL import Image, ImageDraw

    from vlseg.atomic import atomic_write
    from vlseg.data.io import load_image

    tile = 192
    sheet = Image.new("RGB", (tile * len(hits), tile + 40), (20, 20, 20))
    draw = ImageDraw.Draw(sheet)
    for i, h in enumerate(hits):
        im = Image.fromarray(load_image(h["image"]).display).resize((tile, tile))
        sheet.paste(im, (i * tile, 0))
        draw.text((i * tile + 4, tile + 4), f"{h['score']:.3f}", fill=(230, 230, 230))
        draw.text((i * tile + 4, tile + 20), h["caption"][:34], fill=(180, 180, 180))
    with atomic_write(path) as tmp:
        sheet.save(tmp, format="PNG")


def _cmd_eval_retrieval(args: argparse.Namespace) -> int:
    from vlseg.data.io import write_json
    from vlseg.indexing import eval_retrieval

    res = eval_retrieval(_index_model(args.model, args.index), args.index)
    for way in ("text_to_image", "image_to_text"):
        print(f"{way}: " + "  ".join(f"{k} {v:.4f}" for k, v in res[way].items()))
    print(
        f"({res['n_images']} images, {res['n_captions']} distinct captions; text->image counts "
        "every image sharing the caption as a hit)"
    )
    if args.out:
        write_json(args.out, res)
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from vlseg.calibration import calibrate_checkpoint

    res = calibrate_checkpoint(
        args.model,
        args.data,
        val_split=args.val_split,
        train_split=args.train_split,
        method=args.method,
        unsure=None if args.no_unsure else tuple(args.unsure),
        ood_quantile=args.ood_quantile,
        ood_data=args.ood_data,
        limit=args.limit,
        report=args.report,
        allow_small=args.allow_small,
    )
    cal = res["calibration"]
    print(
        f"presence calibration {cal}: val ECE {res['val_ece_raw']:.4f} -> "
        f"{res['val_ece_calibrated']:.4f} ({res['val_expressions']} expressions)"
    )
    print(
        f"out-of-domain fit on {res['ood_train_images']} training images; threshold "
        f"{res['ood_threshold']:.3f} ({args.ood_quantile:.0%} of val images below it)"
    )
    print(f"recorded in {args.model}/config.yaml (serving) and {args.model}/ood.safetensors")
    return 0


def _cmd_mix(args: argparse.Namespace) -> int:
    from vlseg.data.manifest.mix import mix_manifests

    path, counts = mix_manifests(args.out, args.sources, splits=tuple(args.splits), seed=args.seed)
    for src, n in counts.items():
        print(f"{src}: {n} records")
    print(f"wrote {path}")
    return 0


def _cmd_vocabulary(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vlseg.config import load_yaml, save_yaml
    from vlseg.data.manifest import read_manifest
    from vlseg.requests import request_forms_of
    from vlseg.vocabulary import parse, vocabulary_of

    cfg_path = Path(args.into) / "config.yaml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{args.into} holds no config.yaml; give a checkpoint directory")
    records = read_manifest(args.data, args.split)
    meta = load_yaml(cfg_path)
    known = None if args.replace else meta.get("vocabulary")
    prompts = [t for r in records for t in r.prompts]
    meta["vocabulary"] = vocabulary_of(prompts, known=known)
    meta["requests"] = request_forms_of(prompts, None if args.replace else meta.get("requests"))
    save_yaml(meta, cfg_path)  # atomic: temp file, then rename
    n, kept = len(meta["vocabulary"].split()), len(parse(known) or ())
    print(f"{cfg_path}: {n} words ({kept} kept) from {len(records)} {args.split} records")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        from app import serve_args  # the Gradio wiring; the library never imports gradio
    except ImportError as exc:
        raise SystemExit(
            f"vlseg serve needs the app extra: pip install 'vlseg[app]' ({exc})"
        ) from exc
    serve_args(args)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlseg", description="Vision-language referring segmentation for medical images."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "phantoms",
        help="write a procedural phantom dataset (images, masks, "
        "manifest.jsonl) and/or a contact sheet",
    )
    p.add_argument("--out", help="dataset directory to create")
    p.add_argument("--n", type=int, default=200, help="regular samples (80/10/10 train/val/test)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--modality", default="all", choices=["all", "ct", "dermoscopy"])
    p.add_argument("--size", type=int, default=256, help="image side in pixels")
    p.add_argument(
        "--heldout", type=int, default=None, help="test_heldout samples (default n // 10)"
    )
    p.add_argument("--prompts", type=int, default=6, help="phrasings per target")
    p.add_argument(
        "--appearance",
        default="classic",
        choices=["classic", "randomized", "randomized-contrast"],
        help="classic look, or domain randomisation of intensities, contrast phase, noise, blur, "
        "artefacts, field of view and anatomy (same labels-first generator); "
        "randomized-contrast adds arbitrary tissue grey levels, gamma / inverted displays and "
        "skin markings in several styles",
    )
    p.add_argument(
        "--family",
        default="training",
        choices=["training", "heldout"],
        help="the training generator, or the separately written held-out renderer family "
        "(for evaluation only; docs/heldout_family.md)",
    )
    p.add_argument(
        "--volumes",
        action="store_true",
        help="3-D CT volumes instead of 2-D slices: volumes/*.nii.gz (int16 HU), "
        "masks/<volume>/<target>.nii.gz and manifest.jsonl (CT only; --heldout default 0)",
    )
    p.add_argument(
        "--slices", type=int, default=None, help="with --volumes: slices per volume (default 32)"
    )
    p.add_argument(
        "--as-slices",
        action="store_true",
        help="with --volumes: write every axial slice as a 2-D phantom (PNG dataset, the split "
        "of its volume; organs leave the slice towards the ends; --slices default 16)",
    )
    p.add_argument(
        "--dicom",
        action="store_true",
        help="with --volumes: also write each volume as a DICOM CT series under dicom/<volume>/ "
        "(file names shuffled; sort by ImagePositionPatient)",
    )
    p.add_argument("--workers", type=int, default=1, help="parallel rendering processes")
    p.add_argument("--preview", help="write a contact sheet PNG of the first samples")
    p.add_argument("--preview-count", type=int, default=12)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_phantoms)

    p = sub.add_parser("train", help="train a model (also under torchrun for DDP)")
    p.add_argument("--config", help="training YAML, e.g. configs/train/phantom_tiny.yaml")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. epochs=5 lr=3e-4")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "align",
        help="contrastively train the image-embedding head on frozen features (zero-shot and "
        "retrieval); segmentation weights stay unchanged",
    )
    p.add_argument("--config", help="align YAML, e.g. configs/train/phantom_tiny_align.yaml")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. steps=500 data=D")
    p.set_defaults(func=_cmd_align)

    p = sub.add_parser(
        "tune",
        help="few-shot prompt tuning (coop, cocoop, vpt, maple) or LoRA of a frozen model; "
        "writes a small adapter",
    )
    p.add_argument("--config", help="tuning YAML, e.g. configs/tune/coop.yaml")
    p.add_argument("--model", help="base model: registered name or checkpoint dir")
    p.add_argument("--data", help="manifest dataset to tune on")
    p.add_argument("--method", choices=["coop", "cocoop", "vpt", "maple", "lora"])
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. limit=16 n_ctx=8")
    p.set_defaults(func=_cmd_tune)

    p = sub.add_parser(
        "mix", help="one training manifest from several datasets (absolute paths, no copies)"
    )
    p.add_argument("--out", required=True, help="folder for the mixed manifest.jsonl")
    p.add_argument(
        "sources",
        nargs="+",
        help="dataset folders, each optionally DIR:FRACTION to keep that share of its records",
    )
    p.add_argument("--splits", nargs="+", default=["train", "val"], help="splits to take")
    p.add_argument("--seed", type=int, default=0, help="for the FRACTION draws")
    p.set_defaults(func=_cmd_mix)

    p = sub.add_parser("eval", help="referring segmentation metrics on a manifest dataset")
    p.add_argument("--model", default=None, help="name or checkpoint dir (default phantom-tiny)")
    p.add_argument("--adapter", help="a `vlseg tune` adapter dir to apply (e.g. runs/tune/best)")
    p.add_argument("--data", required=True, help="manifest dataset")
    p.add_argument("--split", nargs="+", default=["test"], help="one or more splits")
    p.add_argument("--batch-size", type=_positive_int, default=16)
    p.add_argument(
        "--limit", type=_positive_int, default=None, help="evaluate at most this many items"
    )
    p.add_argument(
        "--no-referring",
        action="store_true",
        help="score the model's direct answer to prompts naming one instance ('the largest "
        "lesion') instead of the referring resolver's, which Segmenter.segment uses",
    )
    p.add_argument(
        "--no-refine",
        action="store_true",
        help="score the decoder's upsampled masks without the edge-aware refinement "
        "(serving.refine) that Segmenter.segment applies",
    )
    p.add_argument(
        "--as-typed",
        action="store_true",
        help="give the model each prompt as typed, request phrasing included ('can you "
        "outline ...'), instead of the description inside it as Segmenter.segment does",
    )
    p.add_argument("--out", help="metrics JSON path")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("predict", help="segment one image from a text prompt")
    p.add_argument("--model", default=None, help="name or checkpoint dir (default phantom-tiny)")
    p.add_argument("--adapter", help="a `vlseg tune` adapter dir to apply (e.g. runs/tune/best)")
    p.add_argument("--image", help="one image or volume (with --text)")
    p.add_argument("--text", help="the prompt; with --data, used for every record")
    p.add_argument(
        "--data",
        help="a manifest: answer every record (its first prompt), batched, resumable; under "
        "torchrun each rank takes its shard",
    )
    p.add_argument("--split", default=None, help="with --data: only this split")
    p.add_argument(
        "--batch-size", type=_positive_int, default=8, help="with --data: images per batch"
    )
    p.add_argument("--num-workers", type=int, default=0, help="with --data: image loaders")
    p.add_argument(
        "--out",
        required=True,
        help="mask PNG at the image's resolution; for a volume (3-D NIfTI, DICOM series folder "
        "or .zip) a .nii.gz with the input's shape and affine, or for a DICOM series a .dcm: a "
        "DICOM SEG referencing the series' slices; with --data a directory",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("classify", help="zero-shot classification of one image")
    p.add_argument("--model", default=None)
    p.add_argument("--adapter", help="a `vlseg tune` adapter dir to apply (e.g. runs/tune/best)")
    p.add_argument("--image", required=True)
    p.add_argument(
        "--labels",
        default=None,
        help="a,b,c, a label-set name (e.g. ham10000) or a YAML file {code: class name}; "
        "default: the model's own default labels",
    )
    p.add_argument("--templates", default=None, help="dermoscopy | ct | generic | a YAML file")
    p.set_defaults(func=_cmd_classify)

    p = sub.add_parser("eval-classify", help="zero-shot accuracy/AUROC on a labelled manifest")
    p.add_argument("--model", default=None)
    p.add_argument("--adapter", help="a `vlseg tune` adapter dir to apply (e.g. runs/tune/best)")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--modality", default=None, help="only images of this modality")
    p.add_argument(
        "--labels",
        default=None,
        help="a,b,c, a label-set name or a YAML file {code: class name}; default: the model's "
        "label set for --modality (recorded with the checkpoint)",
    )
    p.add_argument("--templates", default=None)
    p.add_argument("--out", help="directory for classification.json and confusion.png")
    p.set_defaults(func=_cmd_eval_classify)

    p = sub.add_parser("index", help="retrieval indexes over a dataset's image-caption pairs")
    isub = p.add_subparsers(dest="index_command", required=True, metavar="ACTION")
    b = isub.add_parser("build", help="embed images and captions and save faiss indexes")
    b.add_argument("--model", default=None)
    b.add_argument("--data", required=True)
    b.add_argument("--split", default=None)
    b.add_argument("--kind", default="auto", choices=["auto", "flat", "hnsw", "ivf", "ivfpq"])
    b.add_argument("--out", required=True)
    b.set_defaults(func=_cmd_index_build)

    p = sub.add_parser("search", help="search an index by text or by image")
    p.add_argument("--model", default=None, help=INDEX_MODEL_HELP)
    p.add_argument("--index", required=True)
    p.add_argument("--text")
    p.add_argument("--image")
    p.add_argument("-k", type=int, default=5)
    p.add_argument("--sheet", help="write a contact sheet PNG of the hits")
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser("eval-retrieval", help="recall@1/5/10 text->image and image->text")
    p.add_argument("--model", default=None, help=INDEX_MODEL_HELP)
    p.add_argument("--index", required=True)
    p.add_argument("--out", help="metrics JSON path")
    p.set_defaults(func=_cmd_eval_retrieval)

    p = sub.add_parser(
        "vocabulary",
        help="record the words of a dataset's prompts in a checkpoint (answers then name the "
        "prompt words the model never saw)",
    )
    p.add_argument("--data", required=True, help="the manifest dataset the model was trained on")
    p.add_argument("--split", default="train")
    p.add_argument("--into", required=True, help="checkpoint directory")
    p.add_argument("--replace", action="store_true", help="drop the words already recorded")
    p.set_defaults(func=_cmd_vocabulary)

    p = sub.add_parser(
        "calibrate",
        help="fit presence calibration, the unsure band and the out-of-domain check of a "
        "checkpoint on its data, and record them in the checkpoint",
    )
    p.add_argument("--model", required=True, help="checkpoint directory (changed in place)")
    p.add_argument("--data", required=True)
    p.add_argument("--val-split", default="val")
    p.add_argument("--train-split", default="train")
    p.add_argument("--method", default="temperature", choices=["temperature", "platt"])
    p.add_argument(
        "--unsure",
        type=float,
        nargs=2,
        default=(0.2, 0.8),
        metavar=("LOW", "HIGH"),
        help="calibrated presence probabilities in [LOW, HIGH) are answered 'unsure'",
    )
    p.add_argument("--no-unsure", action="store_true", help="never answer 'unsure'")
    p.add_argument("--ood-quantile", type=float, default=0.99)
    p.add_argument(
        "--ood-data",
        default=None,
        help="dataset whose train/val images define what the model accepts (default: --data), "
        "e.g. domain-randomised phantoms",
    )
    p.add_argument("--limit", type=_positive_int, default=None, help="val expressions to use")
    p.add_argument("--report", default=None, help="directory for calibration.json and a PNG")
    p.add_argument(
        "--allow-small",
        action="store_true",
        help="write the fit even from too little data or an implausible temperature (warns)",
    )
    p.set_defaults(func=_cmd_calibrate)

    p = sub.add_parser("serve", help="start the chat app (Gradio)")
    p.add_argument("--model", default=None, help="name or checkpoint dir (default phantom-tiny)")
    p.add_argument("--index", default=None, help="retrieval index dir for 'find similar cases'")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--auth", default=None, help="user:pass")
    p.add_argument("--concurrency", type=int, default=8, help="chat turns handled at once")
    p.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: concurrent turns keep the cores busy)",
    )
    p.add_argument(
        "--text-dtype",
        default=None,
        choices=["float32", "bfloat16"],
        help="text tower weights (bfloat16: cheaper new prompts on CPUs with AVX512-BF16/AMX)",
    )
    p.set_defaults(func=_cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vlseg`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError) as exc:  # bad input, missing or unwritable files
        print(f"vlseg {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"vlseg {args.command}: interrupted; what was finished is saved (train, tune and "
            "predict --data continue where they stopped when run again)",
            file=sys.stderr,
        )
        return 130


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (0 or a negative count is a typo, not a request)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _writable_file(path: str | None, flag: str = "--out") -> None:
    """Refuse an output file that cannot be written before any work is done (an existing folder,
    a parent that is a file or not writable)."""
    if not path:
        return
    from pathlib import Path

    p = Path(path)
    if p.is_dir():
        raise SystemExit(f"{flag} {path} is a folder; give a file path, e.g. {path}/eval.json")
    parent = p.parent if str(p.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SystemExit(f"{flag} {path}: cannot create its folder ({exc})") from exc
    if not os.access(parent, os.W_OK):
        raise SystemExit(f"{flag} {path}: the folder {parent} is not writable")


def _writable_dir(path: str | None, flag: str = "--out") -> None:
    """The same for an output folder: an existing file there is refused up front."""
    if not path:
        return
    from pathlib import Path

    p = Path(path)
    if p.exists() and not p.is_dir():
        raise SystemExit(f"{flag} {path} is a file; give a folder path")
    existing = next((q for q in [p, *p.parents] if q.exists()), Path("."))
    if not os.access(existing, os.W_OK):
        raise SystemExit(f"{flag} {path}: {existing} is not writable")


if __name__ == "__main__":
    sys.exit(main())
