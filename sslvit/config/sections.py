"""The basic config sections every stage shares: data, model, objective (its base), optimizer, loop.

Each field is declared with :func:`sslvit.config.loader.opt`: its default, its one-line meaning and,
for numbers, its allowed range. The whole run (:class:`sslvit.training.config.RunConfig`) puts
them together; each objective extends :class:`ObjectiveConfig` with its own keys.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from dataclasses import dataclass
from typing import Literal

from sslvit.config.loader import ConfigError, join_key, opt, show_value

MAX_SIDE = 4096  # the largest image side a config accepts (ViT-B/16 at 4096 px: 65,536 patch tokens)

@dataclass
class DataConfig:
    """Where images come from and how they are turned into batches."""

    train_shards: str = opt(
        "",
        "training shards: brace pattern, directory, manifest.json or a ','-separated list, 'hf:NAME[:SPLIT]',"
        " or a built-in split (fashion-mnist:train, digits:train); '' = the built-in digits corpus",
    )
    val_shards: str = opt(
        "",
        "validation shards (evaluators, online evaluation), same forms; '' = the built-in digits val split",
    )
    digits_image_size: int = opt(32, "side in pixels of the built-in digits corpus images", ge=1, le=MAX_SIDE)
    image_size: int = opt(32, "side in pixels of the crops fed to the model", ge=1, le=MAX_SIDE)
    batch_size: int = opt(128, "images per process per micro-batch (before gradient accumulation)", ge=1)
    num_workers: int = opt(2, "data loader worker processes per rank; 0 = load in the main process", ge=0)
    in_memory: bool | None = opt(
        None,
        "hold the shards and decoded images in memory after the first epoch (the same batches, no reading "
        "or decoding later); null = when the shards are local files of at most data.in_memory_mb",
    )
    in_memory_mb: float = opt(1024, "memory each reading process may hold with data.in_memory", gt=0)
    jpeg_decode: Literal["cpu", "nvjpeg"] = opt(
        "cpu",
        "where JPEGs are decoded: 'cpu' (the loader's workers, libjpeg-turbo, only the crop box) or 'nvjpeg'"
        " (the GPU, a batch at a time, torchvision.io.decode_jpeg(device='cuda'); needs a CUDA device and"
        " the pretraining transform: crop and flip)",
    )
    repeats: int = opt(
        1,
        "augmented (and masked) views per decoded image, at consecutive positions; an epoch holds"
        " repeats x the samples",
        ge=1,
    )
    mode: Literal["finite", "resampled"] = opt(
        "finite",
        "'finite': epochs over the shards; 'resampled': shards drawn with replacement, epochs of "
        "data.samples_per_epoch",
    )
    samples_per_epoch: int | None = opt(
        None,
        "samples in an epoch; null = the shard manifest's count (needed for resampled mode or shards without"
        " a manifest)",
        ge=1,
    )
    shuffle_buffer: int = opt(1000, "samples in the streaming shuffle buffer; 0 or 1 = no shuffling", ge=0)
    crop_scale: tuple[float, float] = opt(
        (0.2, 1.0),
        "random-resized-crop area range (low, high) as shares of the image",
        gt=0,
        le=1,
    )
    hflip: bool = opt(True, "random horizontal flips")
    label_key: str = opt(
        "",
        "'' = labels from the .cls member; else a field (dotted path) of the .json member",
    )
    key_dot: Literal["first", "last"] = opt(
        "first",
        "which dot of a member name splits the sample key from the extension",
    )
    mean: tuple[float, float, float] | None = opt(
        None,
        "per-channel pixel mean in [0, 1] units; null = the manifest's, else ImageNet's",
        ge=0,
        le=1,
    )
    std: tuple[float, float, float] | None = opt(
        None,
        "per-channel pixel std in [0, 1] units; null = as for data.mean",
        gt=0,
        le=1,
    )

    def check(self, key: str) -> None:
        """Refuse a crop-scale range whose low end is above its high end."""
        low, high = self.crop_scale
        if low > high:
            shown = show_value(self.crop_scale)
            raise ConfigError(
                f"{join_key(key, 'crop_scale')}: {shown} is out of range; allowed: 0 < low <= high <= 1"
            )


@dataclass
class ModelConfig:
    """Which encoder to build; null keeps the variant's own default."""

    name: str = opt(
        "vit_nano_patch4",
        "encoder variant, a name registered in sslvit.models (sslvit.models.list_models())",
    )
    img_size: int | None = opt(
        None,
        "input side in pixels the encoder is built for; null = data.image_size",
        ge=1,
        le=MAX_SIDE,
    )
    patch_size: int | None = opt(None, "patch side in pixels; null = the variant's", ge=1, family_option=True)
    global_pool: Literal["token", "avg"] | None = opt(
        None,
        "pooled feature: 'token' (class token) or 'avg' (mean of patch tokens); null = the variant's",
        family_option=True,
    )
    pos_embed: Literal["learned", "learned_2d", "sincos", "relative", "shared_relative", "block_relative",
                       "none"] | None = opt(
        None,
        "position embedding: 'learned' 1-D, 'learned_2d', fixed 2-D 'sincos', 'relative' attention (the ViT "
        "paper's), 'shared_relative' (BEiT's 2-D bias shared by all blocks, SimMIM's ViT), 'block_relative' "
        "(BEiT's bias, one table per block, SimMIM's ViT fine-tune; a shared_relative checkpoint's table is "
        "copied into every block) or 'none'; null = the variant's",
        family_option=True,
    )
    pos_embed_at: Literal["input", "every_layer", "every_layer_shared"] | None = opt(
        None,
        "ViT: where positions enter (the input, every layer, or the input table before every layer); null = "
        "the variant's",
        family_option=True,
    )
    class_token: bool | None = opt(None, "prepend a class token; null = the variant's", family_option=True)
    fc_norm: bool | None = opt(
        None,
        "ViT: the final LayerNorm after pooling (a fresh 'fc_norm') instead of on every token, as MAE's and "
        "timm's average-pool fine-tuning; loading a checkpoint with a 'norm' drops it, saying so; null = the "
        "variant's / the checkpoint's",
        family_option=True,
    )
    head_type: Literal["linear", "pre_logits"] | None = opt(
        None,
        "ViT: classification head, 'linear' or 'pre_logits' (a tanh hidden layer first, the ViT paper's "
        "pre-training head); null = the variant's",
        family_option=True,
    )
    weight_init: Literal["mae", "beit"] | None = opt(
        None,
        "ViT: initialisation, 'mae' (xavier linears, MAE's and timm's) or 'beit' (trunc-normal 0.02, attn.proj "
        "and mlp.fc2 divided by sqrt(2 x layer), BEiT's and SimMIM's); null = the variant's ('mae')",
        family_option=True,
    )
    layer_scale_init: float | None = opt(
        None,
        "ViT: layer scale (a learned per-channel gain on each residual branch) initialised to this; null = "
        "the variant's (none)",
        gt=0,
        family_option=True,
    )
    drop_path_rate: float = opt(
        0.0,
        "stochastic depth rate of the last block (linear from 0 over depth)",
        ge=0,
        lt=1,
    )
    num_classes: int = opt(0, "classes of the encoder's classification head; 0 = no head", ge=0)

    def check(self, key: str) -> None:
        """Refuse an unregistered variant (naming close matches) and options its family does not take."""
        if not self.name:
            return  # whether an empty name means anything is the run config's to say
        from sslvit import models  # deferred: torch-free CLI start

        try:
            family = models.model_family(self.name)
        except KeyError:
            names = [*models.list_models(), *getattr(models, "TIMM_NAMES", {})]
            close = difflib.get_close_matches(self.name, names, n=5, cutoff=0.6)
            hint = f"close matches: {', '.join(close)}" if close else "no close match"
            raise ConfigError(
                f"{join_key(key, 'name')}: unknown model {self.name!r}; {hint} (list all: python -c "
                f"\"from sslvit.models import list_models; print(*list_models())\")"
            ) from None
        takes = inspect.signature(models.FAMILIES[family].__init__).parameters
        for f in dataclasses.fields(self):
            if f.metadata.get("family_option") and getattr(self, f.name) is not None and f.name not in takes:
                option = join_key(key, f.name)
                raise ConfigError(f"{option}: the {family} family ({self.name}) has no such option")


@dataclass
class ObjectiveConfig:
    """The pretraining objective: ``name`` picks it; each objective adds its own keys.

    The section is polymorphic: the run config builds the subclass that the objective named
    ``name`` declares (``sslvit.objectives.registry``), so each objective's options are checked
    against that objective's own dataclass and unknown keys are errors.
    """

    name: str = opt(
        "mae",
        "the objective, a name registered in sslvit.objectives (mae, simmim, mpp, data2vec2, supervised, ...)",
    )

    def check(self, key: str) -> None:
        """Refuse combinations of this objective's values that no single range expresses; ``key`` is
        the section's dotted name. Ranges of single values are declared with :func:`opt` and checked
        before this runs; a subclass with rules between its fields overrides this."""


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule (all counted in optimizer steps)."""

    name: Literal["adamw", "adam", "sgd"] = opt(
        "adamw", "optimizer: 'adamw' (decoupled weight decay), 'adam', or 'sgd' (momentum optim.momentum, L2 decay)")
    lr: float | None = opt(None, "peak learning rate; null = optim.base_lr * global batch / 256", gt=0)
    base_lr: float = opt(
        1.5e-4,
        "peak learning rate per 256 images of global batch (used when optim.lr is null)",
        gt=0,
    )
    min_lr: float = opt(0.0, "learning rate at the end of the decay schedule", ge=0)
    weight_decay: float = opt(0.05, "weight decay (none on norms, biases, position embeddings, tokens)", ge=0)
    betas: tuple[float, float] = opt((0.9, 0.95), "Adam betas (beta1, beta2)", ge=0, lt=1)
    momentum: float = opt(0.9, "SGD momentum (optim.name=sgd; the Adam optimizers use optim.betas)", ge=0, lt=1)
    warmup_steps: int | None = opt(
        None,
        "linear warmup length in optimizer steps; null = optim.warmup_epochs * steps per epoch",
        ge=0,
    )
    warmup_epochs: float = opt(
        0.0,
        "linear warmup length in epochs (used when optim.warmup_steps is null)",
        ge=0,
    )
    warmup_lr: float = opt(
        0.0,
        "learning rate at step 0, rising linearly to the peak over the warmup (MAE: 0; SimMIM: 5e-7)",
        ge=0,
    )
    warmup_prefix: bool = opt(
        True,
        "cosine / linear: true = the decay spans the steps after the warmup (MAE's; timm's warmup_prefix=True, "
        "Swin's); false = it spans the whole run from step 0 and the warmup takes the place of its start "
        "(timm's default, SimMIM's fine-tune: at the warmup's end the lr drops from the peak to the decay's value)",
    )
    schedule: Literal["cosine", "linear", "constant", "multistep"] = opt(
        "cosine",
        "learning-rate decay after warmup: 'cosine' / 'linear' from the peak to optim.min_lr, 'constant', or "
        "'multistep' (x optim.gamma at each of optim.milestones)",
    )
    milestones: tuple[float, ...] = opt(
        (),
        "multistep: epochs (from the start, warmup included) at which the learning rate is multiplied by "
        "optim.gamma",
        ge=0,
    )
    gamma: float = opt(0.1, "multistep: the factor applied at each milestone", gt=0, le=1)
    no_decay: tuple[str, ...] | None = opt(
        None,
        "parameter names (or dotted parts of names) exempt from weight decay besides every 1-D parameter; "
        "null = sslvit's list (position tables, class / mask / distillation tokens, what the encoder names); "
        "[] = only 1-D parameters and biases (MAE's and timm's add_weight_decay)",
    )
    clip_grad: float | None = opt(
        None,
        "clip the global gradient norm to this value; null = no clipping",
        gt=0,
    )
    layer_decay: float | None = opt(
        None,
        "layer-wise lr decay: a layer's lr is peak * decay ** (num_layers - layer); null = off",
        gt=0,
        le=1,
    )

    def check(self, key: str) -> None:
        """Refuse a final learning rate above an explicit peak."""
        if self.lr is not None and self.min_lr > self.lr:
            raise ConfigError(f"{join_key(key, 'min_lr')}: {self.min_lr!r} is out of range; allowed: <= "
                              f"{join_key(key, 'lr')} ({self.lr!r})")
        if self.schedule == "multistep" and not self.milestones:
            raise ConfigError(f"{join_key(key, 'milestones')}: required by {join_key(key, 'schedule')}=multistep "
                              "(epochs at which the learning rate drops)")
        if self.milestones and self.schedule != "multistep":
            raise ConfigError(f"{join_key(key, 'milestones')}: {show_value(self.milestones)} would be ignored: "
                              f"{join_key(key, 'schedule')} is {self.schedule!r}, not 'multistep'")


@dataclass
class TrainConfig:
    """The loop: length, precision, logging, checkpoints."""

    steps: int | None = opt(None, "total optimizer steps; null = train.epochs * steps per epoch", ge=1)
    epochs: float = opt(
        1.0,
        "length in passes over the data, may be fractional (used when train.steps is null)",
        gt=0,
    )
    grad_accum: int | None = opt(
        None,
        "micro-batches per optimizer step (gradient accumulation); null = accelerate's "
        "gradient_accumulation_steps, else 1",
        ge=1,
    )
    precision: Literal["auto", "no", "bf16", "fp16"] = opt(
        "auto",
        "mixed precision: 'no' (fp32), 'bf16', 'fp16'; 'auto' = accelerate's mixed_precision, else bf16 on a"
        " bf16 GPU, fp32 on CPU ('bf16' on a CPU with AMX: the default run in 0.74x the time)",
    )
    compile: bool | None = opt(
        None,
        "torch.compile the objective; null = accelerate's dynamo_backend, else off",
    )
    seed: int = opt(0, "random seed (initialisation, masks, data order)", ge=0, le=2**32 - 1)
    log_every: int = opt(10, "log metrics every N optimizer steps", ge=1)
    ckpt_every: int = opt(
        0,
        "write a resumable checkpoint every N optimizer steps; 0 = none (the final model is always written)",
        ge=0,
    )
    keep_last: int = opt(2, "newest step checkpoints kept; 0 = keep every one", ge=0)
    max_nonfinite: int = opt(0, "optimizer steps with a non-finite loss skipped before the run stops", ge=0)
    out_dir: str = opt("runs", "parent directory of the run directories")
    name: str = opt(
        "",
        "run directory name under train.out_dir, also the tracker run name; '' = objective-model-timestamp",
    )
    resume: str = opt(
        "",
        "'' = start fresh; 'latest' = the newest verified checkpoint of train.name's run (without a "
        "name: of the newest run in train.out_dir whose settings fit); or a checkpoint directory",
    )
    trackers: tuple[str, ...] = opt(
        ("tensorboard",),
        "experiment trackers (accelerate's names: tensorboard, wandb, ...), a list or comma-separated; [] = "
        "none",
    )
    project: str = opt("sslvit", "tracker project name (the run name is train.name)")
    progress: bool = opt(True, "show a progress bar")
    overwrite: bool = opt(False, "allow a fresh run into a run directory that already holds outputs")
    preempt_grace_s: float = opt(
        120.0,
        "after SIGTERM / SIGINT: seconds to finish the step and write its checkpoint before exiting "
        "without one (the run stops at a step boundary, exit status 75)",
        gt=0,
    )
    dist_timeout_s: float = opt(
        600.0,
        "seconds a collective waits for a silent process before the run stops (torch's default: 1800)",
        gt=0,
    )
    eval_every: int = opt(
        0,
        "optimizer steps between online kNN evaluations on data.val_shards; 0 = off",
        ge=0,
    )
    eval_probe: bool = opt(False, "online evaluation also fits the linear probe")
    threads: int = opt(
        0,
        "torch intra-op threads per process; 0 = fit the cores and follow what other processes and the "
        "loader workers leave free (re-checked every 10 s; OMP_NUM_THREADS also fixes it)",
        ge=0,
    )

    def check(self, key: str) -> None:
        """Refuse empty tracker names."""
        if any(not name.strip() for name in self.trackers):
            shown = show_value(self.trackers)
            raise ConfigError(f"{join_key(key, 'trackers')}: {shown} holds an empty name; allowed: tracker "
                              "names such as tensorboard or wandb")
