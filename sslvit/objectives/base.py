"""The objective interface: ``loss, metrics = objective(batch)`` over an encoder.

The objective is the one extension point for training signals. A subclass owns its typed config
section (``Config``, a dataclass derived from :class:`sslvit.config.ObjectiveConfig` whose fields
declare their meaning and allowed range with :func:`sslvit.config.opt` and whose ``check(key)``
refuses combinations of values; both run when the config is loaded), whether it
needs labels, which encoder capabilities it requires (``requires``; see
``sslvit.models.encoder.CAPABILITIES``), its training transform, what it reports on a model card
(``card_fields``), its encoder (``self.encoder``, so its state dict reads ``encoder.*`` plus its own
parameters), its masker (``self.masker`` or None; the loader calls it to put masks in the batch)
and its loss. It uses only the encoder interface (``sslvit.models.encoder.Encoder``).

Batches hold ``"image"`` uint8 (N, 3, H, W) or float in [0, 1], ``"label"`` int64
(N,), the masker's keys and optionally ``"valid"`` bool (N,): samples with ``valid == False``
(padding that keeps ranks in step) take no part in the loss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from sslvit.config import ConfigError, DataConfig, ObjectiveConfig
from sslvit.data.stats import IMAGENET_MEAN, IMAGENET_STD
from sslvit.data.transforms import pretrain_transform
from sslvit.models.encoder import Encoder

Metrics = dict[str, Any]


class Objective(nn.Module):
    """Base class: pixel normalisation, patchify / unpatchify, masks and padding-aware means.

    ``cfg`` is an ``sslvit.config.ObjectiveConfig`` or any object with the same attributes;
    ``mean`` / ``std`` are per-channel statistics in [0, 1] units.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type[ObjectiveConfig]] = ObjectiveConfig
    needs_labels: ClassVar[bool] = False
    uses_pooled_features: ClassVar[bool] = False
    requires: ClassVar[frozenset[str]] = frozenset()
    card_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        encoder: Encoder,
        cfg: ObjectiveConfig,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ):
        super().__init__()
        self.check_encoder(encoder)
        self.encoder = encoder
        self.cfg = cfg
        self.register_buffer("pixel_mean", torch.tensor(tuple(mean), dtype=torch.float32), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(tuple(std), dtype=torch.float32), persistent=False)
        self.patch_size: int = encoder.patch_size
        self.grid: tuple[int, int] = tuple(encoder.patch_grid)
        self.num_patches = self.grid[0] * self.grid[1]
        self.mask_ratio: float | None = getattr(cfg, "mask_ratio", None)
        self.masker: Callable[[int, torch.Generator | None], dict[str, torch.Tensor]] | None = None

    # what the objective is ---------------------------------------------------------------------
    @classmethod
    def unsupported_reason(cls, encoder_cls: type[Encoder]) -> str | None:
        """Why ``encoder_cls`` (a backbone family) cannot run this objective, or None when it can."""
        missing = sorted(cls.requires - encoder_cls.supports)
        if not missing:
            return None
        return "; ".join(encoder_cls.lacks.get(m, f"it lacks {m}") for m in missing)

    @classmethod
    def check_encoder(cls, encoder: Encoder | type[Encoder]) -> None:
        """Raise :class:`~sslvit.config.ConfigError` when the encoder's family cannot run this
        objective, naming the reason (``sslvit.objectives.check_pair`` adds the pairs that work)."""
        encoder_cls = encoder if isinstance(encoder, type) else type(encoder)
        reason = cls.unsupported_reason(encoder_cls)
        if reason is not None:
            raise ConfigError(f"objective {cls.name!r} cannot train a {encoder_cls.family!r} backbone: {reason}.")

    @classmethod
    def train_transform(
        cls,
        data: DataConfig,
        objective: ObjectiveConfig | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> Any:
        """The loader's image transform for training with this objective; ``objective`` is its config
        section, ``mean`` / ``std`` the data's statistics (for objectives whose augmentation fills or
        erases with them)."""
        return pretrain_transform(data.image_size, scale=tuple(data.crop_scale), hflip=data.hflip)

    @classmethod
    def card(cls, cfg: ObjectiveConfig | dict) -> str:
        """One line for a model card: the objective and the settings it reports."""
        get = cfg.get if isinstance(cfg, dict) else lambda k, d=None: getattr(cfg, k, d)
        return f"`{cls.name}` " + ", ".join(f"{k}={get(k)}" for k in cls.card_fields)

    # pixels -----------------------------------------------------------------------------------
    @staticmethod
    def to01(images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) in 0..255 or float in [0, 1] -> float32 (N, 3, H, W) in [0, 1]."""
        return images.float() / 255.0 if images.dtype == torch.uint8 else images.float()

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or [0, 1] float (N, 3, H, W) -> float32 (N, 3, H, W), (x - mean) / std per channel."""
        return (self.to01(images) - self.pixel_mean[:, None, None]) / self.pixel_std[:, None, None]

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised (N, 3, H, W) -> (N, 3, H, W) in [0, 1] units (not clamped)."""
        return x * self.pixel_std[:, None, None] + self.pixel_mean[:, None, None]

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs: (N, C, H, W) -> x: (N, L, patch_size**2 * C), pixels ordered (row, col, channel)."""
        p, (h, w) = self.patch_size, self.grid
        n, c = imgs.shape[:2]
        x = imgs.reshape(n, c, h, p, w, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(n, h * w, p * p * c)

    def unpatchify(
        self, x: torch.Tensor, patch_size: int | None = None, grid: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """x: (N, L, p**2 * C) -> imgs: (N, C, H, W); inverse of ``patchify``.

        ``patch_size`` / ``grid`` default to the input patches; an encoder's coarser output tokens
        pass ``output_stride`` / ``feature_grid``.
        """
        p, (h, w) = patch_size or self.patch_size, grid or self.grid
        n, c = x.shape[0], x.shape[-1] // (p * p)
        x = x.reshape(n, h, w, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(n, c, h * p, w * p)

    def mask_to_pixels(self, mask: torch.Tensor) -> torch.Tensor:
        """mask: (N, L) -> (N, 1, H, W) float, 1 where the patch is masked."""
        p, (h, w) = self.patch_size, self.grid
        m = mask.float().reshape(-1, h, w)
        return m.repeat_interleave(p, dim=1).repeat_interleave(p, dim=2).unsqueeze(1)

    # batches ----------------------------------------------------------------------------------
    def masks(self, batch: dict[str, torch.Tensor], keys: Sequence[str] = ("mask",)) -> list[torch.Tensor]:
        """The masker's tensors from the batch; drawn here (global RNG) when the loader did not."""
        if not all(k in batch for k in keys):
            if self.masker is None:
                raise KeyError(f"batch lacks {list(keys)} and {type(self).__name__} has no masker")
            batch = {**batch, **self.masker(batch["image"].shape[0], None)}
        device = batch["image"].device
        return [batch[k].to(device) for k in keys]

    @staticmethod
    def sample_weights(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(N,) float32: 1 for real samples, 0 for padding (``valid == False``)."""
        images = batch["image"]
        if "valid" not in batch:
            return torch.ones(images.shape[0], device=images.device)
        return batch["valid"].to(images.device).float()

    @staticmethod
    def weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Mean of ``values`` weighted by ``weights`` (same shape); 0 when all weights are 0."""
        return (values * weights).sum() / weights.sum().clamp_min(1e-8)

    def flops_per_image(self) -> int:
        """Analytic forward FLOPs per image of the whole objective (multiply-add = 2)."""
        return self.encoder.flops_per_image()

    def untrained_parameters(self) -> set[str]:
        """Encoder parameters this objective's loss cannot reach (``encoder.`` names): those only
        the pooled features use, unless the objective trains on pooled features."""
        if self.uses_pooled_features:
            return set()
        return {f"encoder.{n}" for n in self.encoder.pool_only_parameters()}

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """Per-step work after optimizer step ``step`` (1-based, of ``total_steps``) on the unwrapped
        objective, once per update (not per accumulation micro-batch) and on every rank (an EMA
        teacher's update); the default does nothing."""

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Metrics]:
        """batch -> (scalar loss, metrics of python floats or detached 0-dim tensors)."""
        raise NotImplementedError
