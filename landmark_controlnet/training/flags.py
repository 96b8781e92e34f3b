"""The flags of train_flax_controlnet.py (a superset of the diffusers Flax ControlNet example's).

`main(argv)` parses them and trains; the script at the repository root and
`landmark-controlnet train` both call it.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from landmark_controlnet.options import OneLineParser, parse_step_range

SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine")
DEFAULT_COMPILATION_CACHE = "~/.cache/landmark-controlnet/jax-compilation"


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    description = "Train a ControlNet with JAX/Flax on CPU, GPU or TPU."
    parser = OneLineParser(prog=prog, description=description)
    model = parser.add_argument_group("models")
    model.add_argument(
        "--pretrained_model_name_or_path",
        required=True,
        help="a diffusers Stable Diffusion or FLUX.1 folder or Hub id (PyTorch safetensors, as the Hub "
        "ships them)",
    )
    model.add_argument("--revision", default=None, help="a Hub branch, tag or commit")
    model.add_argument(
        "--from_pt", action="store_true", help="accepted for compatibility: PyTorch weights load natively"
    )
    model.add_argument(
        "--controlnet_model_name_or_path", default=None, help="start from this ControlNet, else from the UNet"
    )
    model.add_argument("--controlnet_revision", default=None)
    model.add_argument("--controlnet_from_pt", action="store_true", help="accepted for compatibility")
    model.add_argument(
        "--tokenizer_name", default=None, help="accepted for compatibility; the model's is used"
    )
    model.add_argument("--cache_dir", default=None, help="where Hub downloads go (HF_HOME otherwise)")

    out = parser.add_argument_group("output")
    out.add_argument(
        "--output_dir", default="runs/{timestamp}", help="model, checkpoints, logs; may contain {timestamp}"
    )
    out.add_argument("--push_to_hub", action="store_true")
    out.add_argument("--hub_model_id", default=None, help="OWNER/NAME (default: the output folder's name)")
    out.add_argument("--hub_token", default=None, help="else HF_TOKEN or the cached login; never printed")

    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset_name",
        default=None,
        help="a Hub id, a builder folder (./builders/NAME) or a save_to_disk folder",
    )
    data.add_argument(
        "--train_data_dir", default=None, help="a local dataset folder (same as --dataset_name)"
    )
    data.add_argument(
        "--load_from_disk", action="store_true", help="accepted; save_to_disk folders are detected"
    )
    data.add_argument("--dataset_config_name", default=None)
    data.add_argument("--streaming", action="store_true", help="stream the dataset (needs --max_train_steps)")
    data.add_argument("--image_column", default="image")
    data.add_argument("--conditioning_image_column", default="conditioning_image")
    data.add_argument("--caption_column", default="caption")
    data.add_argument("--max_train_samples", type=int, default=None)
    data.add_argument("--proportion_empty_prompts", type=float, default=0.0)
    data.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="square training size (default: the base model's own: 512 SD 1.x, 768 SD 2.x, 1024 SDXL "
        "and FLUX.1)",
    )
    data.add_argument(
        "--random_flip",
        action="store_true",
        help="mirror half the rows; conditioning is re-drawn from `landmarks` with left and right swapped",
    )
    data.add_argument(
        "--inpainting",
        action="store_true",
        help="train against an inpainting UNet (9 input channels) with the mask and masked-image latents",
    )
    data.add_argument("--mask_column", default="mask", help="with --inpainting: white = repaint")
    data.add_argument(
        "--mask_dilation",
        type=float,
        default=0.05,
        help="with --inpainting: dilate each mask by a random 0..this x resolution pixels",
    )
    data.add_argument(
        "--cache_latents",
        action="store_true",
        help="compute each row's VAE latents (and mirrored ones with --random_flip) and each caption's "
        "text embedding once, stored beside the dataset; steps then skip both encoders",
    )
    data.add_argument(
        "--latent_cache_dir",
        default=None,
        help="where --cache_latents stores them (default: <dataset folder>/.latent_cache, or "
        "~/.cache/landmark-controlnet/latents for a Hub dataset)",
    )
    data.add_argument("--dataloader_num_workers", type=int, default=4, help="decoding threads per host")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--seed", type=int, default=0)
    optim.add_argument("--train_batch_size", type=int, default=1, help="per device")
    optim.add_argument("--gradient_accumulation_steps", type=int, default=1)
    optim.add_argument("--num_train_epochs", type=int, default=100)
    optim.add_argument("--max_train_steps", type=int, default=None, help="overrides --num_train_epochs")
    optim.add_argument("--learning_rate", type=float, default=1e-4)
    optim.add_argument("--scale_lr", action="store_true", help="x devices x batch size x accumulation")
    optim.add_argument("--lr_scheduler", default="constant", choices=SCHEDULES)
    optim.add_argument("--lr_warmup_steps", type=int, default=0)
    optim.add_argument("--adam_beta1", type=float, default=0.9)
    optim.add_argument("--adam_beta2", type=float, default=0.999)
    optim.add_argument("--adam_weight_decay", type=float, default=1e-2)
    optim.add_argument("--adam_epsilon", type=float, default=1e-8)
    optim.add_argument("--max_grad_norm", type=float, default=1.0)
    optim.add_argument("--mixed_precision", default="no", choices=["no", "fp16", "bf16"])
    optim.add_argument(
        "--gradient_checkpointing",
        nargs="?",
        const="dots",
        default="none",
        metavar="none|blocks|layers|dots",
        help="remat, one level: 'blocks' recomputes each UNet/ControlNet block, 'layers' each "
        "transformer layer, 'dots' each transformer layer but its projections (the flag alone); "
        "FLOPs and saved bytes of each are in the README",
    )
    optim.add_argument(
        "--controlnet_gradient_checkpointing",
        default=None,
        metavar="none|blocks|layers|dots",
        help="the ControlNet's own policy (default: --gradient_checkpointing's)",
    )
    optim.add_argument(
        "--attention",
        default="auto",
        metavar="auto|xla|cudnn|splash",
        help="attention kernel: 'auto' takes cuDNN's fused kernel on GPU and Pallas splash attention "
        "on TPU where they accept the call, XLA elsewhere (the choice is logged at start)",
    )
    optim.add_argument("--snr_gamma", type=float, default=None, help="min-SNR loss weighting (5.0 is usual)")
    add_flux_flags(parser)

    runs = parser.add_argument_group("validation, checkpoints, logs")
    runs.add_argument("--validation_prompt", nargs="+", default=None)
    runs.add_argument("--validation_image", nargs="+", default=None)
    runs.add_argument("--validation_steps", type=int, default=100, help="0 turns validation off")
    runs.add_argument("--num_validation_images", type=int, default=4)
    runs.add_argument("--num_inference_steps", type=int, default=30, help="denoising steps of validation")
    runs.add_argument(
        "--fidelity_rows",
        type=int,
        default=0,
        help="at each validation, generate for this many fixed rows and score whether the images follow "
        "their landmarks (`landmark-controlnet evaluate`'s figures, logged as fidelity/*)",
    )
    runs.add_argument(
        "--fidelity_split",
        default="validation",
        help="the split those rows come from (build it with --validation-fraction)",
    )
    runs.add_argument("--checkpointing_steps", type=int, default=5000, help="0 turns checkpoints off")
    runs.add_argument("--checkpoints_total_limit", type=int, default=None)
    runs.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint folder, or `latest`")
    runs.add_argument("--report_to", default="tensorboard", choices=["tensorboard", "wandb", "all"])
    runs.add_argument("--tracker_project_name", default="train_controlnet_flax", help="the wandb project")
    runs.add_argument("--wandb_entity", default=None)
    runs.add_argument("--logging_steps", type=int, default=100)
    runs.add_argument(
        "--profile_steps",
        type=parse_step_range,
        default=None,
        metavar="A:B",
        help="trace steps A up to B of this run (0 = its first step, which compiles) with jax.profiler into "
        "<output_dir>/profile, for TensorBoard's profile plugin; a plain N means 1:1+N",
    )
    runs.add_argument("--profile_validation", action="store_true", help="accepted for compatibility")
    runs.add_argument("--profile_memory", action="store_true", help="save a device memory profile at the end")
    runs.add_argument(
        "--compilation_cache_dir",
        "--ccache",
        default=DEFAULT_COMPILATION_CACHE,
        help="JAX's persistent compilation cache: a re-run or a resume reads its compiled step instead "
        "of compiling again ('none' turns it off)",
    )

    devices = parser.add_argument_group("devices")
    devices.add_argument(
        "--mesh",
        default=None,
        help="data=N,fsdp=M (N x M = all devices): `fsdp` also splits the ControlNet, its optimiser state "
        "and the frozen models' large tensors (default: data = every device, weights replicated)",
    )
    devices.add_argument(
        "--fsdp_min_elements",
        type=int,
        default=2**16,
        help="tensors with fewer elements stay replicated under fsdp (biases, norms: splitting them "
        "saves little and costs a collective each)",
    )
    devices.add_argument(
        "--dry_run",
        nargs="?",
        const="compile",
        choices=["compile", "shapes"],
        default=None,
        help="print the per-device GB of parameters, optimiser state, frozen weights, the bytes the "
        "backward pass keeps (counted from shapes, remat honoured) and (compiling the step for abstract "
        "inputs) XLA's activations for this model, mesh and batch, then exit without training or "
        "reading any weight; `--dry_run shapes` skips the compilation",
    )

    hosts = parser.add_argument_group("multi-host (TPU pods: --multihost; elsewhere the three below)")
    hosts.add_argument("--multihost", action="store_true", help="jax.distributed.initialize() auto-detected")
    hosts.add_argument("--coordinator_address", default=None, help="HOST:PORT of process 0")
    hosts.add_argument("--num_processes", type=int, default=None)
    hosts.add_argument("--process_id", type=int, default=None)
    hosts.add_argument("--local_rank", type=int, default=-1, help="accepted for compatibility")
    return parser


WEIGHTING_SCHEMES = ("sigma_sqrt", "logit_normal", "mode", "cosmap", "none")


def add_flux_flags(parser: argparse.ArgumentParser) -> None:
    """diffusers' train_controlnet_flux.py flags, read when the base model is a FLUX.1 folder."""
    flux = parser.add_argument_group("FLUX.1 base models (a FluxPipeline folder or Hub id)")
    flux.add_argument(
        "--guidance_scale", type=float, default=3.5, help="FLUX.1-dev's distilled guidance during training"
    )
    flux.add_argument(
        "--weighting_scheme",
        default="logit_normal",
        choices=WEIGHTING_SCHEMES,
        help="how FLUX.1 runs draw their noise levels (diffusers' compute_density_for_timestep_sampling)",
    )
    flux.add_argument("--logit_mean", type=float, default=0.0, help="logit_normal's mean")
    flux.add_argument("--logit_std", type=float, default=1.0, help="logit_normal's standard deviation")
    flux.add_argument("--mode_scale", type=float, default=1.29, help="the `mode` scheme's scale")
    flux.add_argument(
        "--weight_loss",
        action="store_true",
        help="also weight a FLUX.1 run's loss by the scheme (as diffusers' SD3 / Flux DreamBooth scripts)",
    )
    flux.add_argument(
        "--num_double_layers", type=int, default=4, help="a new FLUX.1 ControlNet's double-stream blocks"
    )
    flux.add_argument(
        "--num_single_layers", type=int, default=10, help="a new FLUX.1 ControlNet's single-stream blocks"
    )
    flux.add_argument(
        "--max_sequence_length", type=int, default=512, help="T5 tokens of a FLUX.1 prompt (schnell: 256)"
    )
    flux.add_argument(
        "--control_mode", type=int, default=None, help="a union FLUX.1 ControlNet's mode for every row"
    )


def parse_args(argv: list[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    args.output_dir = args.output_dir.replace("{timestamp}", time.strftime("%Y%m%d_%H%M%S"))
    args.dataset_name = args.dataset_name or args.train_data_dir
    if not args.dataset_name and not args.dry_run:  # a dry run sizes the models; it reads no data
        parser.error("give --dataset_name (or --train_data_dir)")
    if not 0 <= args.proportion_empty_prompts <= 1:
        parser.error("--proportion_empty_prompts must be in [0, 1]")
    if args.streaming and not args.max_train_steps:
        parser.error("--streaming needs --max_train_steps: a stream has no known length")
    if bool(args.validation_prompt) != bool(args.validation_image):
        parser.error("--validation_prompt and --validation_image go together")
    if args.inpainting and args.validation_image:
        parser.error("--inpainting validates on the first row of the data (photo, mask and depth together)")
    if args.cache_latents and args.streaming:
        parser.error("--cache_latents needs a map-style dataset: drop --streaming (rows are cached by index)")
    if args.cache_latents and args.inpainting:
        parser.error("--cache_latents does not apply to --inpainting: its masks are re-dilated every step")
    if not 0 <= args.mask_dilation < 1:
        parser.error("--mask_dilation is a fraction of --resolution, in [0, 1)")
    if args.fidelity_rows and args.inpainting:
        parser.error("--fidelity_rows scores text-to-image generations; it does not apply to --inpainting")
    if args.fidelity_rows and not args.validation_steps:
        parser.error("--fidelity_rows scores at each validation: give --validation_steps")
    if args.resolution is not None and args.resolution % 64:
        parser.error("--resolution must be a multiple of 64 (the validation pipeline needs it)")
    return args


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = parse_args(argv, prog)
    log = start_logging()
    started = time.perf_counter()
    from conditioners.errors import UserError
    from landmark_controlnet.training.loop import NonFiniteLoss, train

    log.info("imports: %.1f s", time.perf_counter() - started)

    try:
        if args.dry_run:
            from landmark_controlnet.training.dry_run import plan_memory
            from landmark_controlnet.training.loop import DTYPES, setup_runtime

            setup_runtime(args)
            plan_memory(args, DTYPES[args.mixed_precision])
            return 0
        output = train(args)
    except NonFiniteLoss as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except UserError as exc:  # a mistake the user can fix (a dataset folder's layout): one line, as the CLI
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"ControlNet written to {output}")
    return 0


def start_logging() -> logging.Logger:
    """The trainer's own messages (start-up times, the cache, resumes) on stderr; libraries keep theirs."""
    log = logging.getLogger("train_flax_controlnet")
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    return log
