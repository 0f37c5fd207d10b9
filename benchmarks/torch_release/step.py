"""An independent PyTorch version of the authors' release's training step.

Written from the paper and from what the release is documented to do, not
from our JAX code, so that `tests/test_release_step_parity.py` can compare
`mclnet_jax.train_step.make_train_step` with it, and the benchmarks can time
the release's step (`benchmarks.torch_release.make_step`). One step
(`train_step`):

1. the embedding network's forward pass once, in train mode, on
   concat([visible, infrared]) -> pool (pre-BNNeck), bn, logits;
2. one SGD step of the modality classifier (MCM) on L_m, softmax
   cross-entropy against the true modality (0 visible, 1 infrared), with the
   features detached; or, with `mcm_through_backbone=True`, as the release
   runs it: L_m back-propagated through the whole backbone, whose gradients
   are then thrown away (two backward passes per step; the MCM's gradients
   are the same either way);
3. the extractor's loss ID + WRT + L_e + lambda (ICA + CCA), with L_e (soft
   cross-entropy against [0.5, 0.5]) through the freshly UPDATED MCM, which
   stays fixed (paper Eq. 3); its BatchNorm normalises with the batch's
   statistics but does not touch its running statistics again (the release
   made a single MCM forward per step, so they move once per step);
4. one SGD step of the extractor: `torch.optim.SGD` with Nesterov momentum
   0.9 and weight decay 5e-4 added to the gradient, in two learning-rate
   groups (backbone 0.1 x lr; BNNeck and classifier 1 x lr).

The losses follow the release: WRT on `pool` with the release's row-maximum
quirk (`variant="release"`) or a proper masked maximum (`"stable"`), and the
release's batch-mean form of the marginal center aggregation on `bn` with
frozen centers (ICA weights each identity's nearest distance by a hard-coded
8, CCA by the camera's sample count).

Distances are computed from differences rather than by the norm expansion:
both mean the same, and the expansion's rounding (which lifts the clamped
diagonal of the distance matrix above the 1e-12 clamp in float32) is float
noise rather than a property of the release worth reproducing.

Needs torch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

# The release's constants.
SQUARED_DISTANCE_CLAMP = 1e-12
SOFTMAX_WEIGHT_EPS = 1e-6
ICA_SAMPLES_PER_IDENTITY = 8  # Hard-coded in the release's ICA.
HEAD_MODULES = ("bottleneck", "classifier")
WRT_VARIANTS = ("release", "stable")


def release_lr(
    epoch: int,
    *,
    base_lr: float,
    warmup_epochs: int = 10,
    boundaries: Sequence[int] = (20, 50),
    factors: Sequence[float] = (0.1, 0.01),
) -> float:
    """The release's per-epoch learning rate (before the group multipliers).

    `base_lr * (epoch + 1) / warmup_epochs` during the warm-up, then
    `base_lr`, then `factors[i] * base_lr` from `boundaries[i]` on.
    """
    if epoch < warmup_epochs:
        return base_lr * (epoch + 1) / warmup_epochs
    lr = base_lr
    for boundary, factor in zip(boundaries, factors, strict=True):
        if epoch >= boundary:
            lr = base_lr * factor
    return lr


def make_optimizers(
    net: torch.nn.Module,
    mcm: torch.nn.Module,
    *,
    lr: float,
    mcm_lr: float,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
):
    """(extractor SGD, MCM SGD) as the release builds them.

    The extractor's SGD has two groups: group 0 is the backbone (every
    parameter outside `bottleneck` and `classifier`, the non-local blocks
    and the unused copies included: those never get a gradient, so SGD
    skips them) at 0.1 x lr; group 1 is BNNeck + classifier at lr. Use
    `set_lr` to move both with the schedule.
    """
    heads, backbone = [], []
    for name, p in net.named_parameters():
        (heads if name.split(".")[0] in HEAD_MODULES else backbone).append(p)
    if not heads or not backbone:
        raise ValueError(
            "net must have bottleneck/classifier parameters and "
            "backbone parameters."
        )
    sgd = dict(momentum=momentum, nesterov=True, weight_decay=weight_decay)
    net_opt = torch.optim.SGD(
        [{"params": backbone, "lr": 0.1 * lr}, {"params": heads, "lr": lr}],
        lr=lr,
        **sgd,
    )
    mcm_opt = torch.optim.SGD(mcm.parameters(), lr=mcm_lr, **sgd)
    return net_opt, mcm_opt


def set_lr(net_opt: torch.optim.SGD, lr: float) -> None:
    """Backbone group 0.1 x lr, heads group lr (the release's adjustment)."""
    net_opt.param_groups[0]["lr"] = 0.1 * lr
    net_opt.param_groups[1]["lr"] = lr


# ---------------------------------------------------------------------------
# Losses.
# ---------------------------------------------------------------------------


def euclidean_distances(x: torch.Tensor) -> torch.Tensor:
    """sqrt(max(||x_i - x_j||^2, 1e-12)) for the rows of x [N, D]."""
    diff = x[:, None, :] - x[None, :, :]
    squared = (diff * diff).sum(-1)
    return squared.clamp(min=SQUARED_DISTANCE_CLAMP).sqrt()


def _softmax_weights_release(values, mask):
    # The release: the maximum of `values * mask` over the whole row.
    row_max = torch.max(values * mask, dim=1, keepdim=True)[0]
    e = torch.exp(values - row_max) * mask
    return e / (e.sum(dim=1, keepdim=True) + SOFTMAX_WEIGHT_EPS)


def _softmax_weights_stable(values, mask):
    # The maximum over the masked entries only (rows here are never empty).
    lowest = torch.finfo(values.dtype).min
    row_max = torch.where(
        mask > 0, values, torch.full_like(values, lowest)
    ).max(dim=1, keepdim=True)[0]
    e = (
        torch.exp(
            torch.where(mask > 0, values - row_max, torch.zeros_like(values))
        )
        * mask
    )
    return e / (e.sum(dim=1, keepdim=True) + SOFTMAX_WEIGHT_EPS)


def wrt_loss(
    features: torch.Tensor, labels: torch.Tensor, *, variant: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """AGW's weighted regularised triplet loss and its accuracy.

    Positives include the anchor itself; SoftMarginLoss with target 1 on
    (weighted negative - weighted positive).
    """
    if variant not in WRT_VARIANTS:
        raise ValueError(
            f"variant must be one of {WRT_VARIANTS}, got {variant!r}."
        )
    weights = (
        _softmax_weights_release
        if variant == "release"
        else _softmax_weights_stable
    )
    dist = euclidean_distances(features)
    is_pos = (labels[:, None] == labels[None, :]).to(dist.dtype)
    is_neg = 1.0 - is_pos
    dist_ap = dist * is_pos
    dist_an = dist * is_neg
    w_ap = weights(dist_ap, is_pos)
    w_an = weights(-dist_an, is_neg)
    furthest_positive = (dist_ap * w_ap).sum(dim=1)
    closest_negative = (dist_an * w_an).sum(dim=1)
    loss = F.soft_margin_loss(
        closest_negative - furthest_positive, torch.ones_like(closest_negative)
    )
    accuracy = (closest_negative >= furthest_positive).to(dist.dtype).mean()
    return loss, accuracy.detach()


def _squared_to_centers(features, centers):
    diff = features[:, None, :] - centers[None, :, :]
    return (diff * diff).sum(-1)  # [N, K]


def center_aggregation_release(
    features: torch.Tensor,
    labels: torch.Tensor,
    centers: torch.Tensor,
    *,
    sigma: float,
    rho: float,
    samples_per_class: int | None,
) -> dict[str, torch.Tensor]:
    """The release's marginal center aggregation (batch-mean hinges).

    center_term = mean_i d(f_i, c_{y_i}); nearest_term = for each class k in
    the batch, min_{i: y_i = k} d(f_i, c_k), times `samples_per_class` (ICA:
    the release's hard-coded 8) or times the class's count (CCA: None),
    summed and divided by N; push = [rho - mean_i min_{k != y_i}
    d(c_{y_i}, c_k)]_+. d is the squared Euclidean distance.

    Returns:
      {"loss", "pull", "push", "pull_argument"}: pull_argument is
      center_term - nearest_term - sigma before the hinge.
    """
    n = features.shape[0]
    d = _squared_to_centers(features, centers)  # [N, K]
    own = d[torch.arange(n, device=d.device), labels]
    center_term = own.mean()
    nearest_sum = features.new_zeros(())
    for k in torch.unique(labels).tolist():
        members = labels == k
        weight = (
            samples_per_class
            if samples_per_class is not None
            else int(members.sum())
        )
        nearest_sum = nearest_sum + own[members].min() * weight
    nearest_term = nearest_sum / n
    pull_argument = center_term - nearest_term - sigma
    pull = torch.clamp(pull_argument, min=0.0)
    between = _squared_to_centers(centers, centers)  # [K, K]
    k = centers.shape[0]
    between = between + torch.diag(
        torch.full(
            (k,), float("inf"), dtype=between.dtype, device=between.device
        )
    )
    separation = between.min(dim=1)[0][labels]
    push = torch.clamp(rho - separation.mean(), min=0.0)
    return {
        "loss": pull + push,
        "pull": pull,
        "push": push,
        "pull_argument": pull_argument.detach(),
    }


def _modality_forward_fixed(
    mcm: torch.nn.Module, features: torch.Tensor
) -> torch.Tensor:
    """bn(map3(map1(x))) with the MCM's current weights held fixed.

    Its BatchNorm normalises with the batch's statistics (train mode) and
    leaves the running statistics alone.
    """
    w = {name: p.detach() for name, p in mcm.named_parameters()}
    x = F.linear(features, w["map1.weight"], w["map1.bias"])
    x = F.linear(x, w["map3.weight"], w["map3.bias"])
    return F.batch_norm(
        x,
        None,
        None,
        w["bn.weight"],
        w["bn.bias"],
        training=True,
        eps=mcm.bn.eps,
    )


def _soft_cross_entropy(logits, targets):
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


# ---------------------------------------------------------------------------
# The step.
# ---------------------------------------------------------------------------


def train_step(
    net: torch.nn.Module,
    mcm: torch.nn.Module,
    net_opt: torch.optim.SGD,
    mcm_opt: torch.optim.SGD,
    *,
    visible: torch.Tensor,
    infrared: torch.Tensor,
    labels: torch.Tensor,
    cameras: torch.Tensor,
    centers: Mapping[str, torch.Tensor],
    sigma: float,
    rho: float,
    center_weight: float,
    wrt_variant: str,
    lr: float,
    mcm_through_backbone: bool = False,
    autocast_dtype: torch.dtype | None = None,
    diagnostics: bool = True,
) -> dict[str, float]:
    """One training step of the release (see the module docstring).

    Args:
      net: the embedding network, forward(visible, infrared) NCHW ->
        {"pool", "bn", "logits"}.
      mcm: the modality classifier (map1, map3, bn).
      net_opt, mcm_opt: from `make_optimizers`.
      visible, infrared: [B, 3, H, W] images.
      labels: [2B] identities of concat([visible, infrared]), 0-based.
      cameras: [2B] cameras, 0-based.
      centers: {"ica": [C, D], "cca": [num_cameras, D]} frozen centers.
      sigma, rho: the margins.
      center_weight: lambda of Eq. 8.
      wrt_variant: "release" or "stable".
      lr: this step's base (heads) learning rate.
      mcm_through_backbone: back-propagate L_m through the backbone too, and
        discard those gradients, as the release does (same result, one more
        backward pass).
      autocast_dtype: run the forward passes and losses under
        `torch.autocast` with this dtype (e.g. torch.bfloat16); None: off.
      diagnostics: also compute the diagnostics below (cheap; off for
        timing).

    Returns:
      The loss terms as Python floats, plus diagnostics: "ica_pull_argument"
      and "cca_pull_argument" (the pull hinges' arguments),
      "loss_triplet_release" / "loss_triplet_stable" (both WRT variants on
      this step's features) and "wrt_negative_weight_sum_min" (only with
      `diagnostics`).
    """
    if autocast_dtype is None:
        autocast = contextlib.nullcontext()
    else:
        autocast = torch.autocast(visible.device.type, dtype=autocast_dtype)
    net.train()
    mcm.train()
    set_lr(net_opt, lr)
    b_vis, b_ir = visible.shape[0], infrared.shape[0]
    modality = torch.cat(
        [
            torch.zeros(b_vis, dtype=torch.long, device=visible.device),
            torch.ones(b_ir, dtype=torch.long, device=visible.device),
        ]
    )

    with autocast:
        out = net(visible, infrared)
        pool, bn, logits = out["pool"], out["bn"], out["logits"]
        # The MCM's step on L_m (its running statistics move here, once).
        m_input = pool if mcm_through_backbone else pool.detach()
        l_m = F.cross_entropy(mcm(m_input), modality)
    mcm_opt.zero_grad(set_to_none=True)
    l_m.backward(retain_graph=mcm_through_backbone)
    mcm_opt.step()
    # The release's backbone gradients of L_m are discarded here.
    net_opt.zero_grad(set_to_none=True)

    with autocast:
        total, l_id, l_wrt, wrt_acc, l_e, ica, cca = _extractor_loss(
            mcm,
            pool,
            bn,
            logits,
            labels=labels,
            cameras=cameras,
            centers=centers,
            sigma=sigma,
            rho=rho,
            center_weight=center_weight,
            wrt_variant=wrt_variant,
        )
    total.backward()
    net_opt.step()

    def value(t):
        return float(t.detach())

    terms = {
        "loss": value(total),
        "loss_id": value(l_id),
        "loss_triplet": value(l_wrt),
        "triplet_accuracy": value(wrt_acc),
        "loss_confusion": value(l_e),
        "loss_mcm": value(l_m),
        "loss_ica": value(ica["loss"]),
        "loss_cca": value(cca["loss"]),
        "ica_pull_argument": float(ica["pull_argument"]),
        "cca_pull_argument": float(cca["pull_argument"]),
    }
    if diagnostics:
        terms.update(_diagnostics(pool.detach().float(), labels))
    return terms


def _extractor_loss(
    mcm,
    pool,
    bn,
    logits,
    *,
    labels,
    cameras,
    centers,
    sigma,
    rho,
    center_weight,
    wrt_variant,
):
    """ID + WRT + L_e + lambda (ICA + CCA), and its terms."""
    l_id = F.cross_entropy(logits, labels)
    l_wrt, wrt_acc = wrt_loss(pool, labels, variant=wrt_variant)
    m_logits = _modality_forward_fixed(mcm, pool)
    l_e = _soft_cross_entropy(m_logits, torch.full_like(m_logits, 0.5))
    ica = center_aggregation_release(
        bn,
        labels,
        centers["ica"],
        sigma=sigma,
        rho=rho,
        samples_per_class=ICA_SAMPLES_PER_IDENTITY,
    )
    cca = center_aggregation_release(
        bn,
        cameras,
        centers["cca"],
        sigma=sigma,
        rho=rho,
        samples_per_class=None,
    )
    total = l_id + l_wrt + l_e + center_weight * (ica["loss"] + cca["loss"])
    return total, l_id, l_wrt, wrt_acc, l_e, ica, cca


@torch.no_grad()
def _diagnostics(pool, labels):
    """Both WRT variants on `pool`, and the smallest sum of the release's
    negative weights (1 where the variants agree)."""
    wrt_both = {
        v: float(wrt_loss(pool, labels, variant=v)[0]) for v in WRT_VARIANTS
    }
    dist = euclidean_distances(pool)
    neg = (labels[:, None] != labels[None, :]).to(dist.dtype)
    neg_weights = _softmax_weights_release(-dist * neg, neg)
    return {
        "wrt_negative_weight_sum_min": float(neg_weights.sum(dim=1).min()),
        "loss_triplet_release": wrt_both["release"],
        "loss_triplet_stable": wrt_both["stable"],
    }
