"""data2vec 2.0 (Baevski et al., 2022, "Efficient Self-supervised Learning with Contextualized Target
Representations for Vision, Speech and Language"): a student encodes the visible patches of several
inverse-block masks of each image and a convolutional decoder predicts, at the hidden patches, the
teacher's contextualised targets: the average of its last ``top_k`` block outputs, each instance
normalised over the patches. The teacher is an exponential moving average of the student (updated
by :meth:`Data2Vec2.after_optimizer_step` after every optimizer step) that sees the whole image.

Multi-masking belongs to the objective, not to the loader's ``data.repeats``: the teacher runs once
per image and its targets serve all ``num_masks`` masked copies of that image, which is where the
method's saving comes from; repeated loader views would each pay for a teacher pass (and each get a
different augmentation, so they could not share targets). The masker therefore returns ``num_masks``
masks per image, ``"mask"`` bool (N, M, L), and the student batch is (N * M) images.

The teacher is the submodule ``teacher`` (a copy of the encoder, frozen, always in eval mode): it is
in the objective's state dict (``teacher.*``, checkpointed and resumed with everything else) and not
in ``encoder.*``, so the published encoder is the student. Parameter names follow fairseq's
``examples/data2vec`` where they have a counterpart (``decoder.blocks``, ``decoder.proj``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sslvit.config import ConfigError, ObjectiveConfig, join_key, opt
from sslvit.data.stats import IMAGENET_MEAN, IMAGENET_STD
from sslvit.models.encoder import Encoder, visible_indices
from sslvit.objectives.base import Metrics, Objective

KEY = "objective"  # the section's dotted key, for errors raised when the objective is built


@dataclass
class Data2Vec2Config(ObjectiveConfig):
    """data2vec 2.0: inverse block masks, multi-masking, the EMA teacher's targets and the conv decoder."""

    name: str = "data2vec2"
    mask_ratio: float = opt(0.8, "share of patches hidden per mask", gt=0, lt=1)
    mask_block: int = opt(3, "side in patches of the square blocks kept visible (inverse block masking)", ge=1)
    num_masks: int = opt(16, "masks per image (multi-mask): the student sees each image this many times", ge=1)
    top_k: int = opt(10, "targets average the outputs of the teacher's last top_k blocks", ge=1)
    layer_norm_targets: bool = opt(True, "layer-normalise the averaged targets (fairseq layer_norm_targets)")
    ema_decay: float = opt(0.9998, "teacher EMA decay at the first step", ge=0, le=1)
    ema_end_decay: float = opt(0.99999, "teacher EMA decay after ema_anneal_steps", ge=0, le=1)
    ema_anneal_steps: int = opt(100_000, "optimizer steps of the linear decay anneal (0: end decay throughout)",
                                ge=0)
    decoder_dim: int = opt(768, "decoder channels (a multiple of objective.decoder_groups)", ge=1)
    decoder_layers: int = opt(6, "decoder conv blocks on the patch grid", ge=1)
    decoder_kernel: int = opt(3, "decoder conv kernel side (odd)", ge=1)
    decoder_groups: int = opt(16, "decoder conv groups", ge=1)
    mask_noise_std: float = opt(0.01, "std of the Gaussian noise the decoder sees at hidden patches in training",
                                ge=0)
    cls_loss: float = opt(0.01, "weight of the class token's regression of the mean patch target (0: off)", ge=0)

    def check(self, key: str) -> None:
        """Refuse decoder channels that the groups do not divide and an even kernel."""
        if self.decoder_dim % self.decoder_groups:
            raise ConfigError(f"{join_key(key, 'decoder_dim')}: {self.decoder_dim} is out of range; allowed: a "
                              f"multiple of {join_key(key, 'decoder_groups')} ({self.decoder_groups})")
        if self.decoder_kernel % 2 == 0:
            raise ConfigError(f"{join_key(key, 'decoder_kernel')}: {self.decoder_kernel} is out of range; "
                              "allowed: an odd number")


@dataclass
class InverseBlockMasker:
    """data2vec 2.0 inverse block masks: square blocks of ``block`` patches are kept visible, in random
    order, until ``L - round(ratio * L)`` patches are visible; the last block adds a random part of
    itself so that every mask hides exactly ``num_masked`` patches. ``num_masks`` masks per sample.
    """

    grid: tuple[int, int]
    ratio: float
    block: int = 3
    num_masks: int = 1

    def __post_init__(self) -> None:
        if not 0.0 < self.ratio < 1.0:
            raise ValueError(f"mask ratio must be in (0, 1), got {self.ratio}")
        self.num_patches = self.grid[0] * self.grid[1]
        self.num_kept = min(max(1, self.num_patches - int(round(self.ratio * self.num_patches))),
                            self.num_patches - 1)
        self.num_masked = self.num_patches - self.num_kept

    def keep_times(self, rows: int, generator: torch.Generator | None) -> torch.Tensor:
        """When each patch becomes visible: blocks centred on every patch get a random time each, and a
        patch takes the earliest time of the blocks that cover it -> (rows, L) float32.

        Times (rows, 1, gh, gw) are padded with +inf and min-pooled over a ``block`` window, so the
        block centred at c covers patches c - block // 2 .. c - block // 2 + block - 1 on each axis.
        """
        gh, gw = self.grid
        times = torch.rand(rows, 1, gh, gw, generator=generator)
        before, after = self.block - 1 - self.block // 2, self.block // 2
        padded = F.pad(-times, (before, after, before, after), value=-math.inf)
        return -F.max_pool2d(padded, self.block, stride=1).reshape(rows, gh * gw)

    def __call__(self, batch_size: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """-> {"mask": bool (B, num_masks, L)}, True = hidden, exactly ``num_masked`` per mask."""
        rows = batch_size * self.num_masks
        times = self.keep_times(rows, generator)
        # ties (patches of one block) are broken at random: shuffle, then a stable sort by time
        shuffle = torch.argsort(torch.rand(rows, self.num_patches, generator=generator), dim=1)
        order = torch.gather(shuffle, 1, torch.argsort(torch.gather(times, 1, shuffle), dim=1, stable=True))
        mask = torch.ones(rows, self.num_patches, dtype=torch.bool)
        mask.scatter_(1, order[:, : self.num_kept], False)
        return {"mask": mask.reshape(batch_size, self.num_masks, self.num_patches)}


class ConvDecoder(nn.Module):
    """fairseq's ``Decoder2d``: blocks of grouped 2-D convolution, channel layer norm (no affine) and
    GELU on the patch grid, residual where the widths match, then a linear map to the target width."""

    def __init__(self, in_dim: int, dim: int, layers: int, kernel: int, groups: int, grid: tuple[int, int]):
        super().__init__()
        self.grid = grid
        self.blocks = nn.ModuleList(
            nn.Conv2d(in_dim if i == 0 else dim, dim, kernel, padding=kernel // 2, groups=groups)
            for i in range(layers)
        )
        self.proj = nn.Linear(dim, in_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, L, C) over the grid, row-major -> (B, L, C); (B, L, C) -> (B, C, gh, gw) for the convs."""
        b, length, c = x.shape
        x = x.transpose(1, 2).reshape(b, c, *self.grid)
        for conv in self.blocks:
            y = conv(x)
            y = F.layer_norm(y.transpose(1, 3), y.shape[1:2]).transpose(1, 3)  # norm over channels
            y = F.gelu(y)
            x = y + x if y.shape == x.shape else y
        return self.proj(x.reshape(b, -1, length).transpose(1, 2))  # (B, D, gh, gw) -> (B, L, D)

    def flops(self, num_patches: int) -> int:
        """Forward FLOPs over ``num_patches`` positions (multiply-add = 2)."""
        flops = 0
        for conv in self.blocks:
            k = conv.kernel_size[0] * conv.kernel_size[1]
            flops += 2 * num_patches * k * (conv.in_channels // conv.groups) * conv.out_channels
        return flops + 2 * num_patches * self.proj.in_features * self.proj.out_features


class Data2Vec2(Objective):
    """Regression of the EMA teacher's top-k averaged, instance-normalised block outputs at hidden patches.

    cfg: :class:`Data2Vec2Config`. The student drops hidden patches (capability ``token_drop``); the
    loss per hidden patch is the squared error summed over the width, scaled by 1 / sqrt(width) (as
    the paper), averaged over hidden patches, plus ``cls_loss`` times the same error of the student's
    class token against the teacher's mean patch target.
    """

    name = "data2vec2"
    Config = Data2Vec2Config
    requires = frozenset({"token_drop"})
    card_fields = ("mask_ratio", "mask_block", "num_masks", "top_k", "ema_decay", "ema_end_decay",
                   "ema_anneal_steps", "decoder_layers", "decoder_dim")

    def __init__(
        self,
        encoder: Encoder,
        cfg: Data2Vec2Config,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ):
        super().__init__(encoder, cfg, mean, std)
        depth, width = encoder.num_feature_blocks, encoder.num_features
        if cfg.top_k > depth:
            raise ConfigError(f"{KEY}.top_k: {cfg.top_k} is out of range; allowed: at most the encoder's "
                              f"{depth} blocks ({encoder.describe()})")
        if width % cfg.decoder_groups:
            raise ConfigError(f"{KEY}.decoder_groups: {cfg.decoder_groups} is out of range; allowed: a divisor "
                              f"of the encoder width {width} ({encoder.describe()})")
        if cfg.cls_loss > 0 and encoder.num_prefix_tokens == 0:
            raise ConfigError(f"{KEY}.cls_loss: {cfg.cls_loss} needs a class token, which "
                              f"{encoder.describe()} lacks; set it to 0")
        self.num_masks, self.top_k = int(cfg.num_masks), int(cfg.top_k)
        self.masker = InverseBlockMasker(self.grid, self.mask_ratio, cfg.mask_block, self.num_masks)
        self.decoder = ConvDecoder(width, cfg.decoder_dim, cfg.decoder_layers, cfg.decoder_kernel,
                                   cfg.decoder_groups, self.grid)
        self.teacher = copy.deepcopy(encoder).requires_grad_(False).eval()

    def train(self, mode: bool = True) -> Data2Vec2:
        """Set the student and decoder to ``mode``; the teacher stays in eval mode (no drop path)."""
        super().train(mode)
        self.teacher.eval()
        return self

    # the teacher ------------------------------------------------------------------------------
    def ema_decay_at(self, step: int) -> float:
        """The EMA decay of update ``step`` (1-based): ``ema_decay`` at the first, linear towards
        ``ema_end_decay`` over ``ema_anneal_steps`` updates, then constant at ``ema_end_decay``."""
        start, end, steps = self.cfg.ema_decay, self.cfg.ema_end_decay, self.cfg.ema_anneal_steps
        done = step - 1  # updates before this one (fairseq's num_updates)
        if done >= steps:
            return float(end)
        return float(start + (end - start) * done / steps)

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """teacher = d * teacher + (1 - d) * student for every parameter, d = :meth:`ema_decay_at`
        ``(step)``; buffers are copied. Every rank applies it to identical tensors."""
        d = self.ema_decay_at(step)
        student = dict(self.encoder.named_parameters())
        names = [n for n, _ in self.teacher.named_parameters()]
        teacher = [p for _, p in self.teacher.named_parameters()]
        torch._foreach_mul_(teacher, d)
        torch._foreach_add_(teacher, torch._foreach_mul([student[n].detach() for n in names], 1.0 - d))
        own = dict(self.encoder.named_buffers())
        for name, buf in self.teacher.named_buffers():
            buf.copy_(own[name])

    @torch.no_grad()
    def targets(self, images: torch.Tensor) -> torch.Tensor:
        """images: normalised (N, 3, H, W) -> targets (N, L, D) float32: the teacher's last ``top_k``
        block outputs (before the final norm, patch tokens only), each instance-normalised over the
        patches ((N, L, D) -> (N, D, L) for ``F.instance_norm``), averaged, then layer-normalised
        when ``layer_norm_targets``.

        The outputs are read with forward hooks on the teacher's public ``blocks`` while its own
        ``forward_features`` runs, so positions and prefix tokens are exactly the encoder's.
        """
        prefix, outs = self.teacher.num_prefix_tokens, []
        blocks = list(self.teacher.blocks)[-self.top_k :]

        def keep(_module: nn.Module, _args: tuple, out: torch.Tensor | tuple) -> None:
            outs.append(out[-1] if isinstance(out, tuple) else out)  # TNT blocks return (pixels, tokens)

        handles = [b.register_forward_hook(keep) for b in blocks]
        try:
            self.teacher.forward_features(images)
        finally:
            for h in handles:
                h.remove()
        y = sum(F.instance_norm(t[:, prefix:].float().transpose(1, 2)).transpose(1, 2) for t in outs)
        y = y / len(outs)
        return F.layer_norm(y, y.shape[-1:]) if self.cfg.layer_norm_targets else y

    # the student ------------------------------------------------------------------------------
    def decode(self, latent: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """latent: (B, P + L_kept, D) student tokens, mask: bool (B, L) -> predictions (B, L, D).

        Hidden positions get Gaussian noise of std ``mask_noise_std`` in training and zeros in eval
        (as fairseq's mask tokens); visible ones their student token, scattered back onto the grid.
        """
        prefix = self.encoder.num_prefix_tokens
        x = latent[:, prefix:]
        b, dim = x.shape[0], x.shape[-1]
        full = torch.zeros(b, self.num_patches, dim, device=x.device, dtype=x.dtype)
        if self.training and self.cfg.mask_noise_std > 0:
            full = full.normal_(0.0, self.cfg.mask_noise_std)
        ids = visible_indices(mask)[..., None].expand(-1, -1, dim)
        return self.decoder(torch.scatter(full, 1, ids, x))

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Metrics]:
        """batch with "image" and "mask" (N, M, L) (drawn here if absent) -> (loss, {"loss", "mask_ratio",
        "target_var", "pred_var"} and "cls_loss" when it is on).

        One teacher pass per image; the student runs on the images repeated M times, (N, ...) ->
        (N * M, ...) with image i at rows i * M .. i * M + M - 1, and its targets repeated the same way.
        """
        images = self.normalize(batch["image"])
        (masks,) = self.masks(batch)
        n, m = masks.shape[0], masks.shape[1]
        mask = masks.reshape(n * m, self.num_patches)  # (N, M, L) -> (N * M, L)
        target = self.targets(images)  # (N, L, D)
        weights = self.sample_weights(batch).repeat_interleave(m)  # (N,) -> (N * M,)
        latent = self.encoder.forward_features(images.repeat_interleave(m, dim=0), mask)
        pred = self.decode(latent, mask).float()  # (N * M, L, D)
        y = target.repeat_interleave(m, dim=0)  # (N, L, D) -> (N * M, L, D)
        scale = 1.0 / math.sqrt(y.shape[-1])
        per_patch = ((pred - y) ** 2).sum(dim=-1) * scale  # (N * M, L)
        loss = self.weighted_mean(per_patch, mask.float() * weights[:, None])
        metrics: Metrics = {"mask_ratio": mask.float().mean().detach()}
        if self.cfg.cls_loss > 0:
            cls_target = target.mean(dim=1).repeat_interleave(m, dim=0)  # (N, D) -> (N * M, D)
            per_row = ((latent[:, 0].float() - cls_target) ** 2).sum(dim=-1) * scale
            cls = self.weighted_mean(per_row, weights)
            loss = loss + self.cfg.cls_loss * cls
            metrics["cls_loss"] = cls.detach()
        metrics.update(loss=loss.detach(), target_var=y.var(dim=0).mean().detach(),
                       pred_var=pred.detach().var(dim=0).mean())
        return loss, metrics

    def flops_per_image(self) -> int:
        """Teacher on all patches + M x (student on the visible patches + decoder on the grid)."""
        enc = self.encoder
        teacher = enc.flops_per_image(include_head=False)
        student = enc.flops_per_image(visible_patches=self.masker.num_kept, include_head=False)
        return teacher + self.num_masks * (student + self.decoder.flops(self.num_patches))
