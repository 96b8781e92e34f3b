"""`train(args)`: what train_flax_controlnet.py runs, from flags to an exported ControlNet."""

from __future__ import annotations

import argparse
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from tqdm import tqdm

from builders.rows import open_dataset
from conditioners.errors import OptionError
from landmark_controlnet.diffusion.attention import attention_report, reset_attention_report
from landmark_controlnet.diffusion.flux_pipeline import Flux
from landmark_controlnet.diffusion.pipeline import StableDiffusion

from . import data as input_data
from .checkpoints import Checkpoints, resolve_resume
from .export import push_to_hub, save_controlnet, write_model_card
from .flux_step import CONTROL_MODE
from .latent_cache import FLUX_TEXT_KEYS, Encoders, LatentCache, build_latent_cache, default_cache_root
from .logs import RunLog
from .models import TrainedModels, compute_of, load_models, token_batch
from .sharding import MeshShape, describe
from .step import Shardings, TrainState, init_state_on_devices, learning_rate_schedule, make_optimizer
from .validation import ValidationSet, Validator, host_copy, save_grid

if TYPE_CHECKING:
    from .fidelity import FidelityCheck

log = logging.getLogger("train_flax_controlnet")
DTYPES = {"no": jnp.float32, "fp16": jnp.float16, "bf16": jnp.bfloat16}


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the message names the last good checkpoint."""


def setup_runtime(args: argparse.Namespace) -> None:
    """Before the first compilation: persistent compilation cache and multi-host start-up."""
    if args.compilation_cache_dir and args.compilation_cache_dir.lower() != "none":
        jax.config.update("jax_compilation_cache_dir", str(Path(args.compilation_cache_dir).expanduser()))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    if args.coordinator_address or args.multihost:
        # Before anything touches a device. On CPU, cross-process collectives use gloo (the default).
        jax.distributed.initialize(
            coordinator_address=args.coordinator_address,
            num_processes=args.num_processes,
            process_id=args.process_id,
        )


@dataclass
class Run:
    """Everything the loop needs, built once."""

    args: argparse.Namespace
    graphs: Any
    state: TrainState
    frozen: Any
    train_step: Any
    batches: Any
    max_steps: int
    start_step: int
    checkpoints: Checkpoints | None
    validator: Validator | None
    validation: ValidationSet | None
    log: RunLog | None
    fidelity: FidelityCheck | None = None
    fidelity_summary: dict[str, Any] | None = None  # the last one, for the model card
    base_family: dict[str, bool] | None = None  # write_model_card's `sdxl` and `flux`

    @property
    def is_main(self) -> bool:
        return jax.process_index() == 0


def train(args: argparse.Namespace) -> Path:
    setup_runtime(args)
    run = build_run(args)
    try:
        final_loss = run_loop(run)
        return finish(run, final_loss)
    finally:
        run.batches.close()  # joins the prefetch thread before the interpreter exits
        if run.checkpoints:
            run.checkpoints.close()
        if run.log:
            run.log.close()


def build_run(args: argparse.Namespace) -> Run:
    output_dir = Path(args.output_dir)
    dtype = DTYPES[args.mixed_precision]
    phases = Phases()
    models = load_models(args, compute_of(args, dtype), mark=phases.mark)
    graphs, params = models.graphs, models.params

    dataset, rows = open_rows(args)
    phases.mark("dataset")
    max_steps = total_steps(args, rows)
    learning_rate = args.learning_rate
    if args.scale_lr:
        learning_rate *= args.train_batch_size * args.gradient_accumulation_steps * jax.device_count()
    schedule = learning_rate_schedule(args.lr_scheduler, learning_rate, args.lr_warmup_steps, max_steps)
    optimizer = make_optimizer(
        schedule,
        (args.adam_beta1, args.adam_beta2),
        args.adam_epsilon,
        args.adam_weight_decay,
        args.max_grad_norm,
    )
    shardings = Shardings.over_all_devices(args.mesh, args.fsdp_min_elements)
    log_layout(shardings, params, models.frozen)
    state = init_state_on_devices(params, optimizer, args.seed, shardings)
    frozen = shardings.put(models.frozen)
    train_step = models.make_step(graphs, optimizer, schedule, models.loss_config, shardings, params, frozen)
    phases.mark("weights to devices")

    cache = None
    if args.cache_latents:
        cache = latent_cache(args, models, rows, encoders_of(models, dtype))
        phases.mark("latent cache")
    validates = jax.process_index() == 0 and bool(args.validation_steps)
    release_loaded_copies(models.base, frozen, shardings, validates)
    checkpoints = Checkpoints(output_dir / "checkpoints", args.checkpoints_total_limit)
    state, position = restore(args, checkpoints, state)
    start_step = int(host_copy(state.step))
    batches = input_batches(args, models.base, rows, start_step, position, shardings, cache)
    phases.mark("checkpoints")

    is_main = jax.process_index() == 0
    validation = validation_set(args, dataset) if is_main and args.validation_steps else None
    validator = None
    if validation:
        validator = Validator.for_base(models.base, graphs.controlnet, args.resolution, args)
    fidelity = None
    if validator and args.fidelity_rows:
        from .fidelity import FidelityCheck  # imports the conditioners' detectors: only when asked

        fidelity = FidelityCheck(args, validator.generator)
    run_log = None
    if is_main:
        config = {k: v for k, v in vars(args).items() if k != "hub_token"}
        run_log = RunLog(
            output_dir / "logs", args.report_to, config, args.tracker_project_name, args.wandb_entity
        )
    phases.mark("validation and logs")
    log.info("start-up: %s", phases)
    return Run(
        args, graphs, state, frozen, train_step, batches, max_steps, start_step,
        checkpoints, validator, validation, run_log, fidelity,
        base_family={"sdxl": models.is_sdxl, "flux": models.is_flux},
    )  # fmt: skip


def release_loaded_copies(
    base: StableDiffusion | Flux, frozen: dict[str, Any], shardings: Shardings, validates: bool
) -> None:
    """Once the step holds its own layout of the frozen weights, the base model's modules (which
    validation samples with) hold no other copy on a device: FLUX.1-dev's transformer and T5 are 34 GB,
    more than a chip holds beside its share of the training state.

    With one process the modules take the step's arrays. The models the step does not hold (a cached
    run's text encoders, the VAE) are split over every device when this process validates, whatever
    the mesh, and stay in host memory when it does not. With several processes validation runs on
    process 0 alone and cannot read arrays that span the hosts: process 0 splits the base over its own
    devices, and the other processes keep it in host memory."""
    one_process = jax.process_count() == 1
    spread = None
    if validates:
        devices = jax.devices() if one_process else jax.local_devices()
        spread = Shardings(MeshShape(1, len(devices)).mesh(devices), shardings.min_elements)
    for name, module in base.frozen_models().items():
        state = nnx.state(module)
        loaded = nnx.to_pure_dict(state)
        if one_process and name in frozen:
            weights = frozen[name]
        elif spread:
            weights = spread.put(loaded)
        else:
            weights = jax.tree.map(np.asarray, loaded)
        nnx.replace_by_pure_dict(state, weights)
        nnx.update(module, state)


def encoders_of(models: TrainedModels, dtype: Any) -> Encoders:
    """The frozen VAE and text encoders that fill the latent cache (FLUX.1's also encode the
    conditioning images)."""
    flux = {"text_keys": FLUX_TEXT_KEYS, "conditioning_latents": True} if models.is_flux else {}
    return Encoders(models.encoder_graphs, models.vae_weights, models.text_weights, dtype, **flux)


def log_layout(shardings: Shardings, params: Any, frozen: dict[str, Any]) -> None:
    """Once, at start: the mesh, what the sharding rule splits, and the bytes each device holds."""
    log.info("%s", describe(params, shardings.specs(params), shardings.mesh, "ControlNet"))
    log.info("%s", describe(frozen, shardings.specs(frozen), shardings.mesh, "frozen models"))


class Phases:
    """The wall time of each start-up phase, logged once: where a slow start goes."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name], self._last = now - self._last, now

    def __str__(self) -> str:
        return ", ".join(f"{name} {seconds:.1f} s" for name, seconds in self.seconds.items())


def open_rows(args: argparse.Namespace):
    dataset = open_dataset(
        args.dataset_name, split="train", config=args.dataset_config_name, streaming=args.streaming
    )
    columns = _columns(args)
    columns.check(dataset)
    if args.max_train_samples:
        dataset = (
            dataset.take(args.max_train_samples)
            if args.streaming
            else dataset.select(range(min(args.max_train_samples, len(dataset))))
        )
    layout = input_data.Layout(
        host_batch=args.train_batch_size * jax.local_device_count(),
        num_hosts=jax.process_count(),
        host_index=jax.process_index(),
    )
    raw = columns.raw(dataset)
    rows = (
        input_data.StreamedRows(raw, layout, args.seed)
        if args.streaming
        else input_data.IndexedRows(raw, layout, args.seed)
    )
    return dataset, rows


def _columns(args: argparse.Namespace) -> input_data.Columns:
    return input_data.Columns(
        args.image_column,
        args.conditioning_image_column,
        args.caption_column,
        mask=args.mask_column if args.inpainting else None,
    )


def total_steps(args: argparse.Namespace, rows: Any) -> int:
    if args.max_train_steps:
        return args.max_train_steps
    if args.streaming:
        raise OptionError("--streaming needs --max_train_steps (a stream has no known length)")
    steps_per_epoch = rows.batches_per_epoch // args.gradient_accumulation_steps
    if steps_per_epoch == 0:
        raise OptionError("one epoch is shorter than one step: lower --gradient_accumulation_steps")
    return args.num_train_epochs * steps_per_epoch


def restore(args: argparse.Namespace, checkpoints: Checkpoints, state: TrainState):
    found = resolve_resume(args.resume_from_checkpoint, checkpoints.directory)
    if found is None:
        return state, None
    directory, step = found
    if directory == checkpoints.directory:
        state, position = checkpoints.restore(step, state)
    else:  # a checkpoint of another run: read it, then save this run's own under its output_dir
        elsewhere = Checkpoints(directory)
        state, position = elsewhere.restore(step, state)
        elsewhere.close()
    log.info("resumed from %s/%d", directory, step)
    return state, position


def latent_cache(
    args: argparse.Namespace, models: TrainedModels, rows: Any, encoders: Encoders
) -> LatentCache:
    """Fill (or reuse) the cache, then stop reading the photos: the loader no longer needs them (nor,
    for FLUX.1, whose conditioning latents are cached too, the conditioning images)."""
    root = Path(args.latent_cache_dir) if args.latent_cache_dir else default_cache_root(args.dataset_name)
    cache = build_latent_cache(
        rows.dataset,
        _columns(args),
        example_options(args, models.base),
        encoders,
        tokenizer(args, models.base),
        root,
        args.dataloader_num_workers,
    )
    rows.dataset = rows.dataset.remove_columns(args.image_column)
    return cache


def tokenizer(args: argparse.Namespace, base: StableDiffusion | Flux) -> Callable[[list[str]], dict]:
    """Captions -> every text encoder's token ids, by batch key (FLUX.1's T5 ids --max_sequence_length)."""
    length = args.max_sequence_length if isinstance(base, Flux) else None
    return lambda captions: token_batch(base, captions, length)


def example_options(args: argparse.Namespace, base: StableDiffusion | Flux) -> input_data.ExampleOptions:
    return input_data.ExampleOptions(
        args.resolution,
        args.random_flip,
        args.proportion_empty_prompts,
        args.mask_dilation if args.inpainting else 0.0,
        size_ids=not isinstance(base, Flux) and base.is_sdxl,
    )


def input_batches(
    args, base, rows, start_step: int, position: dict | None, shardings: Shardings, cache: LatentCache | None
):
    accumulation = args.gradient_accumulation_steps
    if args.streaming:
        epoch, rows_in_epoch = (position or {}).get("hosts", [[0, 0]] * jax.process_count())[
            jax.process_index()
        ]
        row_batches = rows.batches(epoch, rows_in_epoch)
    else:
        row_batches = rows.batches(start_step * accumulation)
    columns, options = _columns(args), example_options(args, base)
    make_example = cache.example if cache else input_data.prepare_example
    mode = {} if args.control_mode is None else {CONTROL_MODE: np.int32(args.control_mode)}
    loader = input_data.BatchLoader(
        row_batches,
        lambda row, rng: {**make_example(row, columns, options, rng), **mode},
        tokenizer(args, base),
        accumulation,
        args.seed,
        first_micro_batch=start_step * accumulation,
        threads=args.dataloader_num_workers,
    )
    return input_data.prefetch(iter(loader), shardings.put_batch)


def validation_set(args: argparse.Namespace, dataset: Any) -> ValidationSet:
    """The flags' prompts and images, or else the first row of the training data."""
    given = ValidationSet.from_flags(args.validation_prompt, args.validation_image)
    if given:
        return given
    columns = _columns(args)
    row = next(iter(dataset))
    conditioning = input_data.decode(row[columns.conditioning_image], "validation row")
    validation = ValidationSet([input_data.caption_text(row[columns.caption])], [conditioning])
    if columns.mask:
        validation.photos = [input_data.decode(row[columns.image], "validation row")]
        validation.masks = [input_data.decode_mask(row[columns.mask], "validation row (mask)")]
    return validation


# -- the loop ---------------------------------------------------------------------------------
def run_loop(run: Run) -> float | None:
    args = run.args
    bar = tqdm(
        total=run.max_steps, initial=run.start_step, desc="train", unit="step", disable=not run.is_main
    )
    previous: tuple[int, Any] | None = None
    last_loss = None
    position: dict[str, int] = {}
    profiler = StepProfiler.from_args(args)
    reset_attention_report()
    for step in range(run.start_step + 1, run.max_steps + 1):
        profiler.before_step(step - run.start_step - 1, run.state)
        batch, position = next(run.batches)
        started = time.perf_counter()
        run.state, metrics = run.train_step(run.state, run.frozen, batch)
        if step == run.start_step + 1:
            jax.block_until_ready(metrics)
            log.info(
                "first step (compiling it, or reading the compilation cache): %.1f s",
                time.perf_counter() - started,
            )
            for line in attention_report():  # which kernel runs which attention calls of the step
                log.info("attention %s", line)
        if previous:  # checked one step late, so the host never waits for the step in flight
            last_loss = check_finite(run, *previous)
        previous = (step, metrics)
        bar.update()
        due = [
            step % args.logging_steps == 0,
            args.checkpointing_steps and step % args.checkpointing_steps == 0,
            args.validation_steps and step % args.validation_steps == 0,
            step == run.max_steps,
        ]
        if any(due):
            last_loss = check_finite(run, step, metrics)
            previous = None
        if due[0] or due[3]:
            _log_metrics(run, step, metrics, bar)
        if due[1] or (due[3] and args.checkpointing_steps):
            run.checkpoints.save(step, run.state, gather_position(position, step))
        if (due[2] or due[3]) and args.validation_steps:
            validate(run, step)
    if previous:
        last_loss = check_finite(run, *previous)
    profiler.close(run.state)
    bar.close()
    return last_loss


def check_finite(run: Run, step: int, metrics: dict[str, Any]) -> float:
    """The step's loss; stop when it, or any updated weight, is NaN or infinite."""
    loss = float(host_copy(metrics["loss"]))
    if not (math.isfinite(loss) and bool(host_copy(metrics["finite"]))):
        run.checkpoints.manager.wait_until_finished()
        good = run.checkpoints.manager.latest_step()
        where = f"{run.checkpoints.directory}/{good}" if good is not None else "none was saved"
        raise NonFiniteLoss(
            f"the loss is {loss} at step {step} (or a weight is no longer finite); training stopped. "
            f"The last good checkpoint: {where}. "
            "Resume from it with --resume_from_checkpoint and a lower --learning_rate, or "
            "--mixed_precision bf16 instead of fp16."
        )
    return loss


def _log_metrics(run: Run, step: int, metrics: dict[str, Any], bar: tqdm) -> None:
    values = {k: float(v) for k, v in host_copy(metrics).items() if k != "finite"}
    bar.set_postfix(loss=f"{values['loss']:.4f}", refresh=False)
    if run.log:
        run.log.scalars(step, values)


def gather_position(position: dict[str, int], step: int) -> dict[str, Any]:
    """Every host's place in its data (they differ when streaming), saved by process 0."""
    mine = np.array([position.get("epoch", 0), position.get("rows_in_epoch", position.get("batch", 0))])
    hosts = multihost_utils.process_allgather(mine) if jax.process_count() > 1 else mine[None]
    return {"step": step, "hosts": np.asarray(hosts).reshape(-1, 2).tolist()}


def validate(run: Run, step: int) -> None:
    """Every process gathers the parameters (a collective when they are sharded); process 0 validates."""
    params = host_copy(run.state.params)
    if not run.validator:
        return
    grid = run.validator(params, run.validation, run.args.num_validation_images, run.args.seed)
    save_grid(grid, Path(run.args.output_dir), step)
    if run.log:
        run.log.image(step, "validation", grid)
    if run.fidelity:
        from .fidelity import fidelity_scalars

        summary = run.fidelity(params, step)
        run.fidelity_summary = {"step": step, "split": run.args.fidelity_split, **summary}
        if run.log:
            run.log.scalars(step, fidelity_scalars(run.fidelity_summary))


class StepProfiler:
    """A `jax.profiler` trace of this run's steps `steps` (0 = its first step, which compiles or reads
    the compilation cache) in `directory`, as TensorBoard's profile plugin reads it:
    `plugins/profile/<time>/<host>.xplane.pb`."""

    def __init__(self, steps: range | None, directory: Path):
        self.steps = steps
        self.directory = directory
        self.tracing = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> StepProfiler:
        """--profile_steps, traced on process 0 only: the hosts of a pod run the same program."""
        steps = args.profile_steps if jax.process_index() == 0 else None
        return cls(steps, Path(args.output_dir) / "profile")

    def before_step(self, index: int, in_flight: Any) -> None:
        """Called before the run's step `index` is dispatched; `in_flight` is what the steps before it
        compute (the train state)."""
        if not self.steps:
            return
        if index == self.steps.start:
            jax.profiler.start_trace(str(self.directory))
            self.tracing = True
        elif index == self.steps.stop:
            self.close(in_flight)

    def close(self, in_flight: Any) -> None:
        """Stop a trace, once the traced steps are done: steps run asynchronously, and a trace stopped
        while the last one runs would miss its device time."""
        if self.tracing:
            jax.block_until_ready(in_flight)
            jax.profiler.stop_trace()
            self.tracing = False
            span = f"{self.steps.start}:{self.steps.stop}"
            log.info("profile of steps %s in %s (tensorboard --logdir it)", span, self.directory)


# -- the result -------------------------------------------------------------------------------
def finish(run: Run, final_loss: float | None) -> Path:
    output_dir = Path(run.args.output_dir)
    params = host_copy(run.state.params)
    checksum = sum(float(np.abs(p).astype(np.float64).sum()) for p in jax.tree_util.tree_leaves(params))
    # Every host prints it: on a pod, equal lines show that all hosts hold the same model.
    print(f"process {jax.process_index()}/{jax.process_count()}: ControlNet |params| sum {checksum:.10e}")
    if run.is_main:
        if run.args.profile_memory:
            jax.profiler.save_device_memory_profile(str(output_dir / "memory.prof"))
        save_controlnet(nnx.merge(run.graphs.controlnet, params), output_dir)
        grids = sorted((output_dir / "validation").glob("step-*.png"))
        flags = {k: v for k, v in vars(run.args).items() if k != "hub_token"}
        write_model_card(
            output_dir,
            run.args.pretrained_model_name_or_path,
            run.args.dataset_name,
            flags,
            grids[-1] if grids else None,
            final_loss,
            run.fidelity_summary,
            **(run.base_family or {}),
        )
        if run.args.push_to_hub:
            repo_id = run.args.hub_model_id or output_dir.resolve().name
            print(f"pushed to {push_to_hub(output_dir, repo_id, run.args.hub_token)}")
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("train_flax_controlnet finished")
    return output_dir
