"""`landmark-controlnet`: list, run and re-draw conditioners; run the built-in demo."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from .options import OneLineParser, options_dict, parse_option, parse_size


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="landmark-controlnet", description=__doc__)
    parser.add_argument(
        "--verbose", action="store_true", help="keep MediaPipe's native log lines (hidden by default)"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("conditioners", help="list the registered conditioner names")

    condition = commands.add_parser("condition", help="detect landmarks and write conditioning images")
    condition.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders of images")
    _add_conditioner_args(condition, required=True, several=True)
    condition.add_argument("--out-dir", type=Path, default=Path("conditioned"))
    condition.add_argument(
        "--size", type=parse_size, help="conditioning image size WxH (default: input size)"
    )
    condition.add_argument(
        "--contact-sheet", type=Path, help="also write inputs and results side by side here"
    )

    evaluate = commands.add_parser(
        "evaluate", help="score whether generated images follow their reference landmarks"
    )
    evaluate.add_argument("--generated", type=Path, help="<stem>.png or <stem>_<k>.png files")
    evaluate.add_argument(
        "--reference",
        type=Path,
        help="the NAME.json detections of `condition` (its out-dir/CONDITIONER folder)",
    )
    _add_conditioner_args(evaluate, required=False)
    evaluate.add_argument("--out", type=Path, required=True, help="summary.json, rows.jsonl and report.png")
    generate = evaluate.add_argument_group("generate, then score (instead of --generated/--reference)")
    generate.add_argument("--controlnet", help="a ControlNet folder or Hub id")
    generate.add_argument("--base-model", help="a Stable Diffusion folder or Hub id")
    generate.add_argument(
        "--dataset", help="a built dataset folder or Hub id (landmarks, conditioning_image, caption)"
    )
    generate.add_argument("--split", default="validation")
    generate.add_argument("--rows", type=int, default=16)
    generate.add_argument("--samples-per-row", type=int, default=1)
    _add_sampler_args(generate)
    generate.add_argument("--strength", default="1.0", help="control strengths, e.g. 0.4,0.6,0.8,1.0")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--batch-size", type=int, default=4)
    generate.add_argument("--resolution", type=int, help="default: the base model's")
    generate.add_argument(
        "--compare", help="a second ControlNet, scored on the same rows, seeds and strengths"
    )

    draw = commands.add_parser("draw", help="re-draw a stored detection JSON without running the detector")
    draw.add_argument("detection", type=Path, metavar="DETECTION.json")
    _add_conditioner_args(draw, required=False)
    draw.add_argument("--out", type=Path, required=True, metavar="FILE.png")
    draw.add_argument("--size", type=parse_size, help="WxH (default: the stored image size)")
    draw.add_argument(
        "--image",
        default="conditioning_image",
        metavar="NAME",
        help="which image: conditioning_image (default) or an extra image of the conditioner, e.g. mask",
    )

    build = commands.add_parser("build", help="build a dataset folder (Parquet shards + dataset card)")
    build.add_argument("name", help="a builder name (folder under builders/) or a builder folder")
    build.add_argument(
        "--source", required=True, help="source path, or a dataset name for hf_dataset sources"
    )
    build.add_argument("--split", default="train")
    build.add_argument("--num-proc", type=int, default=1)
    build.add_argument("--max-samples", type=int)
    build.add_argument("--shard-size", type=int, default=500, help="source items per Parquet shard")
    build.add_argument(
        "--validation-fraction",
        type=float,
        default=0.0,
        help="hold this fraction of rows out into a `validation` split (chosen by a hash of source_id)",
    )
    build.add_argument("--engine", choices=["local", "ray"], default="local")
    build.add_argument(
        "--output", help="build here instead of the builder's own folder: a path or an fsspec URL (s3://...)"
    )
    build.add_argument("--overwrite", action="store_true", help="discard this split's shards and start again")

    show = commands.add_parser(
        "show", help="load a built dataset with datasets.load_dataset and summarise it"
    )
    show.add_argument(
        "name", help="a builder name or folder, a dataset folder (a Hub snapshot, save_to_disk) or a Hub id"
    )
    show.add_argument("--split", help="one split (default: every split)")

    publish = commands.add_parser("publish", help="upload a built dataset folder to the Hugging Face Hub")
    publish.add_argument("name", metavar="NAME_OR_DIR", help="a builder name or a built folder")
    publish.add_argument("--repo-id", required=True, metavar="OWNER/NAME")
    publish.add_argument("--private", action="store_true")
    publish.add_argument("--revision", default="main", help="a branch; created from main when missing")
    publish.add_argument("--token", help="Hub token (default: HF_TOKEN or the saved login); never printed")

    # Parsed by the trainer itself (main() hands it the rest of the line); listed here for --help.
    commands.add_parser(
        "train", help="train a ControlNet with JAX/Flax: the flags of train_flax_controlnet.py (train --help)"
    )

    _add_refine_hands(commands)
    _add_generate(commands)
    _add_app(commands)

    demo = commands.add_parser(
        "demo", help="every conditioner on built-in sample photos, a demo dataset and a tiny ControlNet"
    )
    demo.add_argument("--out-dir", type=Path, default=Path("outputs/demo"))
    demo.add_argument("--no-train", action="store_true", help="skip training the tiny ControlNet")
    return parser


def _add_sampler_args(parser: Any) -> None:
    """The sampler settings `evaluate` and `generate` share."""
    parser.add_argument(
        "--steps", type=int, default=25, help="sampler steps (DDIM; flow-match Euler for FLUX.1)"
    )
    parser.add_argument(
        "--guidance-scale",
        type=float,
        help="default: the base model's: 7.5 (SD classifier-free guidance), 3.5 (FLUX.1 distilled guidance)",
    )


def _add_app(commands: Any) -> None:
    from .studio.app import DEFAULT_HOST, DEFAULT_MAX_UPLOAD_MB, DEFAULT_PORT

    app = commands.add_parser(
        "app", help="Landmark ControlNet Studio: conditioners, datasets, generation, runs and evaluation"
    )
    app.add_argument(
        "--host", default=DEFAULT_HOST, help="address to listen on (default 127.0.0.1; 0.0.0.0 serves others)"
    )
    app.add_argument("--port", type=int, default=DEFAULT_PORT)
    app.add_argument(
        "--data-root", type=Path, default=Path.cwd(),
        help="every path typed in the app must lie inside this folder (default: the working directory)",
    )  # fmt: skip
    app.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    app.add_argument("--max-upload-mb", type=int, default=DEFAULT_MAX_UPLOAD_MB, help="the upload size cap")


def _add_refine_hands(commands: Any) -> None:
    refine = commands.add_parser(
        "refine-hands",
        help="repair malformed hands: depth ControlNet + inpainting SD inside a mask around each hand",
    )
    refine.add_argument("--image", required=True, help="the image to repair")
    refine.add_argument("--prompt", required=True, help="the prompt the image was generated with")
    refine.add_argument(
        "--controlnet", required=True, help="a ControlNet folder or Hub id (trained with --inpainting)"
    )
    refine.add_argument(
        "--base-model", required=True, help="an inpainting Stable Diffusion folder (9-channel UNet)"
    )
    refine.add_argument(
        "--from-pt", action="store_true", help="accepted for compatibility: PyTorch weights load natively"
    )
    refine.add_argument(
        "--strength", type=float, default=0.55, help="control strength (HandRefiner: 0.4-0.8)"
    )
    refine.add_argument("--out", type=Path, required=True, help="the repaired image (PNG keeps it exact)")
    refine.add_argument("--preview", type=Path, help="also write input | depth | mask | result here")
    refine.add_argument("--steps", type=int, default=30, help="DDIM steps")
    refine.add_argument("--guidance-scale", type=float, default=7.5)
    refine.add_argument("--seed", type=int, default=0)
    refine.add_argument("--resolution", type=int, default=512, help="long side the model works at")
    refine.add_argument("--feather", type=float, default=8, help="blend width inside the mask edge, px")
    refine.add_argument(
        "--padding", type=float, default=0.15, help="mask padding, x the hand box's long side"
    )
    refine.add_argument("--min-padding", type=float, default=30, help="least mask padding, px")
    refine.add_argument("--tight-mask", action="store_true", help="dilated hand silhouette instead of a box")


def _add_generate(commands: Any) -> None:
    generate = commands.add_parser(
        "generate", help="images from a ControlNet and a pose (a photo, a detection JSON or DATASET_DIR#ROW)"
    )
    generate.add_argument(
        "--base-model", required=True, help="a Stable Diffusion (1.x, 2.x, XL) folder or Hub id"
    )
    generate.add_argument("--controlnet", required=True, help="a ControlNet folder or Hub id")
    generate.add_argument(
        "--pose",
        required=True,
        metavar="SOURCE",
        help="a photo (detected with the ControlNet's conditioner), a detection JSON, or DATASET_DIR#ROW",
    )
    generate.add_argument("--prompt", required=True)
    generate.add_argument("--negative-prompt", default="")
    generate.add_argument("--num-images", type=int, default=1)
    generate.add_argument(
        "--strength", type=float, default=1.0, help="control strength, in [0, 2] (0: no control)"
    )
    _add_sampler_args(generate)
    generate.add_argument("--seed", type=int, default=0, help="image k is drawn with seed + k * 100003")
    generate.add_argument("--resolution", type=int, help="square side in px (default: the base model's)")
    generate.add_argument(
        "--out-dir",
        type=Path,
        required=True,
        help="conditioning.png, image_<k>.png, report.json; never overwritten",
    )
    generate.add_argument(
        "--score", action="store_true", help="re-detect each image and score it against the pose"
    )
    _add_conditioner_args(generate, required=False)


def _add_conditioner_args(parser: argparse.ArgumentParser, required: bool, several: bool = False) -> None:
    what = "a registered name (see `landmark-controlnet conditioners`)"
    parser.add_argument(
        "--conditioner",
        required=required,
        action="append" if several else "store",
        help=what + ("; repeat it or give a comma list for several, each written to its own subfolder "
                     "of --out-dir" if several else ""),
    )  # fmt: skip
    parser.add_argument(
        "--option",
        action="append",
        type=parse_option,
        metavar="KEY=VALUE",
        help="conditioner option, repeatable",
    )


def main(argv: list[str] | None = None) -> int:
    """Run one command. A mistake the user can fix (a `UserError`: bad file, missing weights, unknown
    name or option) prints one line and exits 2; only unexpected bugs show a traceback."""
    from conditioners.errors import UserError

    try:
        return _run(sys.argv[1:] if argv is None else argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(argv: list[str]) -> int:
    if argv[:1] == ["train"]:
        from .training.flags import main as train_main

        return train_main(argv[1:], prog="landmark-controlnet train")
    args = build_parser().parse_args(argv)
    if args.verbose:
        from conditioners._mediapipe import VERBOSE_ENV

        os.environ[VERBOSE_ENV] = "1"  # build workers inherit it
    if args.command == "conditioners":
        import conditioners

        print("\n".join(conditioners.available()))
        return 0
    if args.command == "condition":
        from .condition import ConditionRequest, conditioner_names, run_condition

        request = ConditionRequest(
            conditioners=conditioner_names(args.conditioner),
            inputs=tuple(args.inputs),
            out_dir=args.out_dir,
            options=options_dict(args.option),
            size=args.size,
            contact_sheet=args.contact_sheet,
        )
        return run_condition(request)
    if args.command == "draw":
        from .condition import run_draw

        return run_draw(
            args.detection, args.out, args.conditioner, options_dict(args.option), args.size, args.image
        )
    if args.command == "evaluate":
        return _evaluate(args)
    if args.command == "build":
        return _build(args)
    if args.command == "show":
        return _show(args)
    if args.command == "publish":
        from builders.publish import publish

        print(publish(args.name, args.repo_id, args.private, args.token, revision=args.revision))
        return 0
    if args.command == "refine-hands":
        return _refine_hands(args)
    if args.command == "generate":
        return _generate(args)
    if args.command == "app":
        from conditioners.errors import UserError

        from .studio.app import StudioSettings, serve

        if not args.data_root.is_dir():
            raise UserError(f"--data-root {args.data_root}: no such folder")
        serve(StudioSettings(args.data_root, args.host, args.port, args.share, args.max_upload_mb))
        return 0
    if args.command == "demo":
        from .demo import run_demo

        run_demo(args.out_dir, train=not args.no_train)
        return 0
    return 2


def _evaluate(args: argparse.Namespace) -> int:
    import json

    from conditioners.errors import UserError

    if args.controlnet:
        from .evaluation.generate import (
            GenerationSettings,
            comparison_table,
            generate_and_score,
            parse_strengths,
        )

        if not (args.base_model and args.dataset):
            raise UserError("evaluate --controlnet needs --base-model and --dataset")
        settings = GenerationSettings(
            controlnet=args.controlnet, base_model=args.base_model, dataset=args.dataset, out=args.out,
            split=args.split, rows=args.rows, samples_per_row=args.samples_per_row, steps=args.steps,
            guidance_scale=args.guidance_scale, strengths=parse_strengths(args.strength), seed=args.seed,
            batch_size=args.batch_size, resolution=args.resolution, compare=args.compare,
            conditioner_options=options_dict(args.option),
        )  # fmt: skip
        summary = generate_and_score(settings)
        if args.compare:
            print(comparison_table(summary))
    else:
        from .evaluation.scoring import evaluate_folder

        if not (args.generated and args.reference):
            raise UserError(
                "evaluate needs --generated and --reference, or --controlnet, --base-model and --dataset"
            )
        summary = evaluate_folder(
            args.generated, args.reference, args.out, args.conditioner, options_dict(args.option)
        )
    print(json.dumps(summary))
    return 0


def _build(args: argparse.Namespace) -> int:
    import json

    from builders import BuildSettings
    from builders.run import run_build

    settings = BuildSettings(
        split=args.split,
        num_proc=args.num_proc,
        max_samples=args.max_samples,
        shard_size=args.shard_size,
        validation_fraction=args.validation_fraction,
    )
    report = run_build(args.name, args.source, settings, args.output, args.engine, args.overwrite)
    if report.hints:  # hands, not images; the JSON line below has them too
        print(
            f"hint_not_found: {report.hint_not_found} of {report.hints} hinted hands (the source's hand "
            "boxes) were found by no detector pass",
            file=sys.stderr,
        )
    print(json.dumps(report.to_dict()))
    return 0


def _refine_hands(args: argparse.Namespace) -> int:
    from conditioners import OptionError, UserError

    from .refine_hands import run_refine_hands

    if not 0 <= args.strength <= 2:
        raise OptionError(f"--strength {args.strength} is outside [0, 2] (HandRefiner uses 0.4-0.8)")
    try:
        return run_refine_hands(args)
    except OSError as exc:  # a model folder that is missing or incomplete
        raise UserError(f"refine-hands: {exc}") from exc


def _generate(args: argparse.Namespace) -> int:
    import json

    from .generate import GenerateRequest, generate

    request = GenerateRequest(
        base_model=args.base_model, controlnet=args.controlnet, pose=args.pose, prompt=args.prompt,
        out_dir=args.out_dir, negative_prompt=args.negative_prompt, num_images=args.num_images,
        strength=args.strength, steps=args.steps, guidance_scale=args.guidance_scale, seed=args.seed,
        resolution=args.resolution, score=args.score, conditioner=args.conditioner,
        conditioner_options=options_dict(args.option),
    )  # fmt: skip
    print(json.dumps(generate(request).report))
    return 0


def _show(args: argparse.Namespace) -> int:
    from builders.rows import dataset_splits, open_dataset

    for split in [args.split] if args.split else dataset_splits(args.name):
        dataset = open_dataset(args.name, split)
        print(f"{split}: {len(dataset)} rows, columns {', '.join(dataset.column_names)}")
        for index, row in enumerate(dataset.select(range(min(3, len(dataset))))):  # any dataset's columns
            image = getattr(row.get("image"), "size", None)
            print(f"- {row.get('source_id', f'row {index}')}: {image} {row.get('caption')!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
