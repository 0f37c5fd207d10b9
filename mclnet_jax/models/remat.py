"""Rematerialisation that saves memory on XLA:CPU as well.

`MCLNet(remat=...)` ("none", "blocks", "stages") uses `checkpointed_call`
on each residual and non-local block, and with "stages" on each stage.
docs/design.md "Model" and "Performance".
"""

import flax.linen as nn
import jax

REMATS = ("none", "blocks", "stages")


def check_remat(remat: str) -> None:
    """Raises ValueError unless `remat` is one of `REMATS`."""
    if remat not in REMATS:
        raise ValueError(f"remat must be one of {REMATS}, got {remat!r}.")


def plain_call(module: nn.Module, x: jax.Array, train: bool) -> jax.Array:
    return module(x, train=train)


def checkpointed_call(
    module: nn.Module, x: jax.Array, train: bool
) -> jax.Array:
    """`module(x, train)`, recomputed in the backward pass (rematerialised).

    The backward pass keeps only `x` and the module's variables and runs
    the module's forward again. Unlike `nn.remat` (`jax.checkpoint`), the
    recomputation takes a data dependency on the incoming gradient: XLA:CPU
    drops the optimisation barriers `jax.checkpoint` relies on, so it merges
    the recomputation with the first forward or runs all of them early, and
    keeps as much memory as without remat. Gradients and BatchNorm updates
    are those of `module(x, train)`. Outside training it is a plain call.
    """
    if not train or module.is_initializing():
        return module(x, train=train)
    unbound = module.clone(parent=None)

    def forward(mdl, x):
        return mdl(x, train=train)

    def forward_with_residuals(mdl, x):
        return mdl(x, train=train), (mdl.variables, x)

    def backward(residuals, g):
        variables, x = residuals
        # 0 * g[0] is not folded for floats, so `x` now waits for `g`.
        x = x + (0 * g.reshape(-1)[0]).astype(x.dtype)

        def apply(params, x):
            y, _ = unbound.apply(
                {**variables, "params": params},
                x,
                train=train,
                mutable=["batch_stats"],
            )
            return y

        _, pull = jax.vjp(apply, variables["params"], x)
        g_params, g_x = pull(g)
        return {"params": g_params}, g_x

    return nn.custom_vjp(
        forward,
        forward_fn=forward_with_residuals,
        backward_fn=backward,
    )(module, x)
