"""The ``vlseg`` command line: one subcommand per pipeline stage."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _cmd_phantoms(args: argparse.Namespace) -> int:
    from vlseg.data.phantoms import generate_sample, write_dataset
    from vlseg.data.phantoms.sheet import contact_sheet

    if args.out is None and args.preview is None:
        raise SystemExit("vlseg phantoms: give --out DIR (a dataset) and/or --preview SHEET.png")
    if args.out is not None:
        out = write_dataset(args.out, args.n, seed=args.seed, modality=args.modality,
                            size=args.size, n_heldout=args.heldout,
                            prompts_per_target=args.prompts, workers=args.workers,
                            overwrite=args.overwrite, progress=not args.quiet)
        print(f"wrote {out / 'manifest.jsonl'}")
    if args.preview is not None:
        k = min(args.n, args.preview_count)
        mods = ["ct", "dermoscopy"] if args.modality == "all" else [args.modality]
        samples = [generate_sample(seed=args.seed, index=i, modality=mods[i % len(mods)],
                                   size=args.size, prompts_per_target=args.prompts)
                   for i in range(k)]
        print(f"wrote {contact_sheet(samples, args.preview)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlseg", description="Vision-language referring segmentation for medical images.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("phantoms", help="write a procedural phantom dataset (images, masks, "
                       "manifest.jsonl) and/or a contact sheet")
    p.add_argument("--out", help="dataset directory to create")
    p.add_argument("--n", type=int, default=200, help="regular samples (80/10/10 train/val/test)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--modality", default="all", choices=["all", "ct", "dermoscopy"])
    p.add_argument("--size", type=int, default=256, help="image side in pixels")
    p.add_argument("--heldout", type=int, default=None,
                   help="test_heldout samples (default n // 10)")
    p.add_argument("--prompts", type=int, default=6, help="phrasings per target")
    p.add_argument("--workers", type=int, default=1, help="parallel rendering processes")
    p.add_argument("--preview", help="write a contact sheet PNG of the first samples")
    p.add_argument("--preview-count", type=int, default=12)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_phantoms)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vlseg`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileExistsError, FileNotFoundError) as exc:
        print(f"vlseg {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
