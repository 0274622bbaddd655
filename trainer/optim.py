"""StableAdamW, the optimizer ModernBERT and mmBERT were trained with, and its parameter groups.

Written out here (about as long as importing it would be) so the trainer needs
nothing beyond torch on a GPU node; the update follows optimi's ``StableAdamW``
with ``decouple_lr=True``, which ModernBERT's trainer vendors. Parameters may be
FSDP2's ``DTensor`` shards: the update is elementwise on each shard, and the one
statistic over a whole tensor (the RMS that clips it) is reduced over all shards.
"""

from __future__ import annotations

import torch
from torch import nn

from mixtures.recipe import TrainingSpec
from trainer.parallel import full_tensor, shard_like


def debiased_beta(beta: float, step: int) -> float:
    """``(beta^t - beta) / (beta^t - 1)``: an EMA with this weight equals Adam's bias-corrected one."""
    return (beta**step - beta) / (beta**step - 1)


class StableAdamW(torch.optim.Optimizer):
    """AdamW with per-tensor update clipping (Wortsman et al. 2023, arXiv 2304.13013).

    For each tensor ``p`` with gradient ``g`` at step ``t``, with ``b1``, ``b2`` the
    debiased betas (so ``m`` and ``v`` are the bias-corrected moments)::

        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g^2
        lr_t = lr / max(1, sqrt(mean(g^2 / max(v, eps^2))))
        p = p * (1 - lr_t / max_lr * weight_decay)      # fully decoupled weight decay
        p = p - lr_t * m / (sqrt(v) + eps)

    ``max_lr`` is the schedule's peak, so weight decay follows the schedule's
    shape but not the value of the peak. State per tensor: ``exp_avg``,
    ``exp_avg_sq`` (fp32, like the parameters; ``DTensor`` shards like them under
    FSDP2) and the integer ``step``. The mean in ``lr_t`` is over the whole tensor:
    on a ``DTensor`` the sum is a partial one per shard, all-reduced by
    ``full_tensor``, so a sharded run clips exactly as one process does.
    """

    SLOTS = ("exp_avg", "exp_avg_sq")  # the tensors of each parameter's state, as checkpoints name them

    def __init__(
        self,
        params,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        max_lr: float | None = None,
    ):
        if not lr >= 0 or not eps > 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(
                f"invalid StableAdamW settings: lr={lr}, betas={betas}, eps={eps}, wd={weight_decay}"
            )
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "max_lr": max_lr or lr,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("StableAdamW takes no closure")
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            eps, decay, max_lr = group["eps"], group["weight_decay"], group["max_lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                b1, b2 = debiased_beta(beta1, state["step"]), debiased_beta(beta2, state["step"])
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.lerp_(grad, 1 - b1)
                exp_avg_sq.mul_(b2).addcmul_(grad, grad, value=1 - b2)
                ratio = full_tensor((grad.square() / exp_avg_sq.clamp(min=eps * eps)).sum())
                rms = (ratio / p.numel()).sqrt()  # numel: the whole tensor's, also for a DTensor
                lr_t = group["lr"] / rms.clamp(min=1.0)  # a tensor: no host sync on the GPU
                if decay:
                    p.mul_(1 - lr_t / max_lr * decay)
                p.sub_(exp_avg / exp_avg_sq.sqrt().add_(eps) * lr_t)


def make_optimizer(model: nn.Module, training: TrainingSpec) -> StableAdamW:
    """StableAdamW over ``model`` as the phase's training section says (its peak is ``max_lr``)."""
    return StableAdamW(
        param_groups(model, training.optimizer.weight_decay),
        lr=training.lr.peak,
        betas=training.optimizer.betas,
        eps=training.optimizer.eps,
        max_lr=training.lr.peak,
    )


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices (linear and embedding weights), none on norms and biases (recipe)."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        (decay if parameter.dim() >= 2 else no_decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def named_state(
    optimizer: StableAdamW, names: dict[nn.Parameter, str]
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """The optimizer's per-parameter state flattened to names, as checkpoints store it.

    Returns ``{"<parameter>.<slot>": tensor}`` (whole, on the CPU, contiguous) and
    each parameter's integer ``step``; parameters without state yet are left out.
    Like torchtitan's flat optimizer state dict, keyed by parameter name rather
    than position, so a checkpoint does not depend on the order of param groups.
    Sharded moments are gathered in the order of ``names``, the same on every rank,
    so under FSDP2 every rank calls this together.
    """
    tensors, steps = {}, {}
    for parameter, name in names.items():
        state = optimizer.state.get(parameter)
        if not state:
            continue
        for slot in optimizer.SLOTS:
            tensors[f"{name}.{slot}"] = full_tensor(state[slot].detach()).contiguous().cpu()
        steps[name] = state["step"]
    return tensors, steps


def load_named_state(
    optimizer: StableAdamW,
    names: dict[nn.Parameter, str],
    tensors: dict[str, torch.Tensor],
    steps: dict[str, int],
) -> None:
    """Restore what :func:`named_state` gave, laid out as each parameter (its device, its shard);
    KeyError names what is missing."""
    for parameter, name in names.items():
        if name not in steps:
            raise KeyError(f"no optimizer state for {name}")
        optimizer.state[parameter] = {
            "step": int(steps[name]),
            **{slot: shard_like(tensors[f"{name}.{slot}"], parameter) for slot in optimizer.SLOTS},
        }
