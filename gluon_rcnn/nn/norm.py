"""Normalisation layers chosen by name: frozen, plain, synchronised and group BN.

Every layer here takes and returns a float tensor of shape ``(N, C, H, W)`` (any memory
format; ``channels_last`` is kept) and is picked with :func:`get_norm` from the names used in
the config (``BACKBONE.NORM``, ``FPN.NORM``): ``'FreezeBN'``, ``'BN'``, ``'SyncBN'``, ``'GN'``,
``'None'``.

:func:`fold_frozen_bn` applies each ``FrozenBatchNorm2d`` inside the convolution before it, in
training too (a faster step, the same state dict; :func:`unfold_frozen_bn` undoes it).

``SyncBatchNorm2d`` exists because ``torch.nn.SyncBatchNorm`` refuses CPU tensors; this one
runs the same computation over a gloo process group on the CPU (and hands CUDA tensors on an
NCCL group to PyTorch's own kernel), so a SyncBN config trains the same way on both.
"""
from __future__ import annotations

import re

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["FrozenBatchNorm2d", "FrozenBNConv2d", "SyncBatchNorm2d", "get_norm", "NORM_NAMES", "fold_frozen_bn",
           "unfold_frozen_bn"]

NORM_NAMES = ("FreezeBN", "BN", "SyncBN", "GN", "None")


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics: ``y = x * scale + shift``.

    ``scale = weight / sqrt(running_var + eps)``, ``shift = bias - running_mean * scale``.
    ``running_mean``/``running_var`` are buffers (never updated, never synchronised). With
    ``freeze_affine=True`` (the default, torchvision's ``FrozenBatchNorm2d``) ``weight``/``bias``
    are buffers too; with ``freeze_affine=False`` they are trainable parameters (tensorpack's
    FreezeBN with ``RULES.FREEZE_AFFINE=False``: gamma/beta learn on the frozen statistics).
    Either way the state-dict keys are those of ``torchvision.ops.FrozenBatchNorm2d`` and
    ``nn.BatchNorm2d`` (whose extra ``num_batches_tracked`` is dropped on load), so ImageNet BN
    weights load unchanged.

    Input/output: ``(N, C, H, W)`` float tensor; the output keeps the input's memory format.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, *, freeze_affine: bool = True):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.freeze_affine = freeze_affine
        if freeze_affine:
            self.register_buffer("weight", torch.ones(num_features))
            self.register_buffer("bias", torch.zeros(num_features))
        else:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # checkpoints of nn.BatchNorm2d carry a step counter that means nothing once frozen
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    #: set by :func:`fold_frozen_bn`: the convolution before this layer applies it, so it passes through
    folded = False

    def scale_shift(self) -> tuple[Tensor, Tensor]:
        """The per-channel ``(scale, shift)`` of ``y = x * scale + shift``, shape ``(C,)``."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return scale, self.bias - self.running_mean * scale

    def forward(self, x: Tensor) -> Tensor:
        if self.folded:
            return x
        # one fused multiply-add over the activation; the per-channel maths is on C numbers only
        scale, shift = self.scale_shift()
        return x * scale.reshape(1, -1, 1, 1).to(x.dtype) + shift.reshape(1, -1, 1, 1).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}" + ("" if self.freeze_affine else ", freeze_affine=False")

    @classmethod
    def convert_frozen_batchnorm(cls, module: nn.Module) -> nn.Module:
        """Return ``module`` with every ``nn.BatchNorm2d`` (incl. ``SyncBatchNorm2d``), and every
        ``FrozenBatchNorm2d`` with trainable affine parameters, replaced by a fully frozen
        ``FrozenBatchNorm2d`` (all buffers) holding its current statistics and affine values.

        Used to freeze stages (``FREEZE_AT``): a frozen stage's output must not change, which a
        BN in training mode would do through its batch statistics (and a trainable gamma/beta
        through the optimiser).
        """
        if isinstance(module, cls) and not module.freeze_affine:
            frozen = cls(module.num_features, module.eps).to(module.running_mean.device)
            with torch.no_grad():
                for name in ("weight", "bias", "running_mean", "running_var"):
                    getattr(frozen, name).copy_(getattr(module, name))
            return frozen
        if isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)):
            device = module.running_mean.device if module.running_mean is not None else (
                module.weight.device if module.affine else None)
            frozen = cls(module.num_features, module.eps).to(device)
            with torch.no_grad():
                if module.affine:
                    frozen.weight.copy_(module.weight)
                    frozen.bias.copy_(module.bias)
                if module.track_running_stats:
                    frozen.running_mean.copy_(module.running_mean)
                    frozen.running_var.copy_(module.running_var)
            return frozen
        for name, child in module.named_children():
            new = cls.convert_frozen_batchnorm(child)
            if new is not child:
                setattr(module, name, new)
        return module


class FrozenBNConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` that applies the :class:`FrozenBatchNorm2d` after it inside the convolution:
    ``conv(x, weight * scale, bias * scale + shift)``, ``scale``/``shift`` recomputed from the norm at
    every call, so the result is differentiable w.r.t. the convolution's weight (and a trainable
    gamma/beta) and tracks them as they train. Made by :func:`fold_frozen_bn` (which switches the
    class of an existing convolution: same parameters, same state-dict keys); the norm stays
    where it was, holding its buffers, and passes its input through.

    Forward and backward each skip one elementwise pass over the activation (the norm's
    multiply-add and its gradient); the results differ from conv-then-norm by float rounding only.
    """

    def forward(self, x: Tensor) -> Tensor:
        norm = self.__dict__["_frozen_bn"]  # not a submodule: the norm keeps its own state-dict keys
        scale, shift = norm.scale_shift()
        weight = self.weight * scale.reshape(-1, 1, 1, 1)
        bias = shift if self.bias is None else self.bias * scale + shift
        return self._conv_forward(x, weight, bias)


def conv_norm_pairs(module: nn.Module, accept):
    """``(parent, conv_name, conv, norm_name, norm)`` for each ``nn.Conv2d`` directly followed by a norm
    that ``accept(norm)`` takes: ``convN`` and ``bnN`` (else ``normN``) children of one block (the ResNet
    convention), and adjacent children of an ``nn.Sequential`` (a shortcut's conv and norm). Each
    parent's children are read before its pairs are yielded, so a caller may replace them."""
    for parent in list(module.modules()):
        children = dict(parent.named_children())
        if isinstance(parent, nn.Sequential):
            names = list(children)
            for a, b in zip(names, names[1:]):
                if isinstance(children[a], nn.Conv2d) and accept(children[b]):
                    yield parent, a, children[a], b, children[b]
            continue
        for name, conv in children.items():
            m = re.fullmatch(r"conv(\d+)", name)
            if not m or not isinstance(conv, nn.Conv2d):
                continue
            for nname in (f"bn{m.group(1)}", f"norm{m.group(1)}"):
                norm = children.get(nname)
                if norm is not None and accept(norm):
                    yield parent, name, conv, nname, norm
                    break


def fold_frozen_bn(module: nn.Module) -> int:
    """Fold every :class:`FrozenBatchNorm2d` of ``module`` into the convolution before it, in place, for
    training as well as inference (:class:`FrozenBNConv2d`); returns the number of pairs folded.

    Unlike :func:`gluon_rcnn.nn.fuse.fuse_conv_norm` (inference: the statistics are baked into new
    fixed weights) nothing is baked: parameters, buffers, state-dict keys and what the optimiser
    sees are unchanged, and :func:`unfold_frozen_bn` restores the plain modules. Only the pairs
    that run back to back are folded (a block's ``convN`` → ``bnN``, adjacent children of a
    ``Sequential``); a norm that is not folded keeps normalising. Idempotent.
    """
    count = 0
    for _, _, conv, _, norm in list(conv_norm_pairs(module, lambda n: isinstance(n, FrozenBatchNorm2d))):
        if type(conv) not in (nn.Conv2d, FrozenBNConv2d) or conv.padding_mode != "zeros":
            continue  # a subclass with its own forward, or padding that _conv_forward would redo
        if norm.folded and conv.__dict__.get("_frozen_bn") is not norm:
            continue  # that norm already belongs to another convolution
        conv.__class__ = FrozenBNConv2d
        conv.__dict__["_frozen_bn"] = norm
        norm.folded = True
        count += 1
    return count


def unfold_frozen_bn(module: nn.Module) -> int:
    """Undo :func:`fold_frozen_bn` in ``module``, in place; returns the number of pairs restored."""
    count = 0
    for m in module.modules():
        if isinstance(m, FrozenBNConv2d):
            m.__dict__.pop("_frozen_bn").folded = False
            m.__class__ = nn.Conv2d
            count += 1
    return count


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are taken over the whole process group.

    Same parameters, buffers and state-dict keys as ``nn.BatchNorm2d``. In training mode with an
    initialised process group of more than one rank, the per-channel mean and (biased) variance
    are those of the union of all ranks' batches:

    - CUDA tensors on a group whose backend includes NCCL use PyTorch's own SyncBatchNorm kernel;
    - anything else (CPU tensors on gloo) all-reduces ``[sum, sum of squares, count]`` per channel
      in one differentiable ``all_reduce`` (``torch.distributed.nn.functional``), accumulated in
      float64 so that ``E[x^2] - E[x]^2`` does not cancel badly.

    The gradient is that of the *sum over ranks* of each rank's loss (the convention of
    ``nn.SyncBatchNorm`` and DDP). Running statistics are updated as ``nn.BatchNorm2d`` would on
    the whole batch (unbiased variance). Without a process group, with one rank, or in eval mode
    it is exactly ``nn.BatchNorm2d``.

    Input/output: ``(N, C, H, W)`` float tensor (``N`` may be 0 on some ranks).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, process_group=None,
                 device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        self.process_group = process_group

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        group = self.process_group if self.process_group is not None else None
        need_sync = (bn_training and self.training and dist.is_available() and dist.is_initialized()
                     and dist.get_world_size(group) > 1)
        if not need_sync:
            return super().forward(input)

        momentum = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as nn.BatchNorm2d
                momentum = 1.0 / float(self.num_batches_tracked.item())
        running_mean = self.running_mean if self.track_running_stats else None
        running_var = self.running_var if self.track_running_stats else None
        pg = group if group is not None else dist.group.WORLD
        world_size = dist.get_world_size(pg)

        if input.is_cuda and "nccl" in str(dist.get_backend(pg)):
            from torch.nn.modules._functions import SyncBatchNorm as _SyncBNFunction
            return _SyncBNFunction.apply(input, self.weight, self.bias, running_mean, running_var,
                                         self.eps, momentum, pg, world_size)
        return _all_reduce_batch_norm(input, self.weight, self.bias, running_mean, running_var,
                                      self.eps, momentum, pg)


def _all_reduce_batch_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None,
                           running_mean: Tensor | None, running_var: Tensor | None,
                           eps: float, momentum: float, group) -> Tensor:
    """Batch norm with statistics over all ranks of ``group``; differentiable end to end."""
    from torch.distributed.nn.functional import all_reduce as diff_all_reduce

    c = x.shape[1]
    dims = [0, 2, 3]
    # float64 accumulation: sums over N*H*W values, then a difference of two large numbers
    local = torch.cat([
        x.sum(dims, dtype=torch.float64),
        (x * x).sum(dims, dtype=torch.float64),
        torch.full((1,), float(x.numel() // max(c, 1)), dtype=torch.float64, device=x.device),
    ])
    total = diff_all_reduce(local, op=dist.ReduceOp.SUM, group=group)
    count = total[2 * c]
    n = float(count.detach().item())
    if n <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got {int(n)} over all ranks "
                         f"(input size {list(x.shape)})")
    mean = total[:c] / count
    var = (total[c:2 * c] / count - mean * mean).clamp_min(0.0)
    invstd = torch.rsqrt(var + eps)
    scale = invstd if weight is None else invstd * weight.to(torch.float64)
    shift = -mean * scale if bias is None else bias.to(torch.float64) - mean * scale

    if running_mean is not None and running_var is not None:
        with torch.no_grad():
            running_mean.mul_(1.0 - momentum).add_(mean.detach().to(running_mean.dtype), alpha=momentum)
            unbiased = var.detach() * (n / (n - 1.0))
            running_var.mul_(1.0 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)

    return x * scale.to(x.dtype).reshape(1, -1, 1, 1) + shift.to(x.dtype).reshape(1, -1, 1, 1)


def get_norm(name: str, channels: int, *, gn_groups: int = 32, freeze_affine: bool = True) -> nn.Module:
    """Build the normalisation layer named ``name`` for ``channels`` channels.

    ``'FreezeBN'`` → :class:`FrozenBatchNorm2d`; ``'BN'`` → ``nn.BatchNorm2d``;
    ``'SyncBN'`` → :class:`SyncBatchNorm2d`; ``'GN'`` → ``nn.GroupNorm(gn_groups, channels)``;
    ``'None'`` (or ``None``/``''``) → ``nn.Identity``. All use eps=1e-5.

    ``freeze_affine`` concerns ``'FreezeBN'`` only (``False``: its gamma/beta are trainable
    parameters, the statistics stay frozen); the other norms always train their affine.
    """
    if name in (None, "", "None"):
        return nn.Identity()
    if name == "FreezeBN":
        return FrozenBatchNorm2d(channels, freeze_affine=freeze_affine)
    if name == "BN":
        return nn.BatchNorm2d(channels)
    if name == "SyncBN":
        return SyncBatchNorm2d(channels)
    if name == "GN":
        if channels % gn_groups != 0:
            raise ValueError(f"GroupNorm with {gn_groups} groups needs channels divisible by {gn_groups}, "
                             f"got {channels}")
        return nn.GroupNorm(gn_groups, channels)
    raise ValueError(f"unknown norm {name!r}; expected one of {list(NORM_NAMES)}")
