"""The train state every task shares: step, params, EMA params and optimizer state, plus its optimizer."""
from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs. RNG is not stored: keys are derived from (seed, step, device) each step."""

    step: jnp.ndarray
    params: Any
    ema_params: Any
    opt_state: Any

    @classmethod
    def create(cls, params, tx: optax.GradientTransformation) -> "TrainState":
        return cls(step=jnp.zeros((), jnp.int32), params=params, ema_params=params, opt_state=tx.init(params))


def decay_mask(params) -> Any:
    """True for the leaves weight decay applies to: the kernels of Dense and Conv layers only.

    Biases, normalisation scales, embeddings and CLIP's learnt temperature and bias are not decayed (big_vision
    decays kernels only; open_clip excludes gains, biases and the logit scale): decaying the temperature pulls it
    towards 0, i.e. towards uniform logits, which fights the contrastive loss.
    """
    return jax.tree_util.tree_map_with_path(lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def make_optimizer(*, learning_rate: float, warmup_steps: int, num_steps: int, weight_decay: float,
                   grad_clip: float, b2: float = 0.999) -> optax.GradientTransformation:
    """AdamW (Loshchilov & Hutter 2019) with linear warmup, cosine decay to 10% and global-norm gradient clipping.

    Weight decay applies to kernels only (`decay_mask`).
    """
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=learning_rate, warmup_steps=max(warmup_steps, 1),
        decay_steps=max(num_steps, warmup_steps + 1), end_value=0.1 * learning_rate)
    return optax.chain(optax.clip_by_global_norm(grad_clip),
                       optax.adamw(schedule, b2=b2, weight_decay=weight_decay, mask=decay_mask))


def apply_gradients(state: TrainState, grads, tx: optax.GradientTransformation, ema_decay: float,
                    constrain: Optional[Callable[[Any], Any]] = None) -> TrainState:
    """One optimizer update plus the EMA of the weights (with the usual (1+n)/(10+n) warmup of the decay).

    `constrain` maps the updated parameters into their allowed set (e.g. CLIP's temperature clamp) before the EMA
    takes them in.
    """
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if constrain is not None:
        params = constrain(params)
    decay = jnp.minimum(ema_decay, (1.0 + state.step) / (10.0 + state.step))
    ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
    return state.replace(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state)
