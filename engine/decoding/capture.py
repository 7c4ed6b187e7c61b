"""One way to read the residual stream during a forward: ``captured_residuals``.

"Residual k" is the stream after k decoder layers (0 = the embeddings, the input of the first layer),
the state the logit lens, the tuned lens, probes and exit rules read. A forward hook on every decoder
layer records the chosen positions of the chosen residuals; the hooks are removed on exit, also when the
forward raises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch

from engine.models import LoadedModel, innermost


def hidden_of(output: object) -> torch.Tensor:
    """A decoder layer's output state (some layers return a tuple with the state first)."""
    return output[0] if isinstance(output, tuple) else output


def with_hidden(output: object, hidden: torch.Tensor) -> object:
    """The layer's output with its state replaced (same shape of result as the layer returned)."""
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def layer_input(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


@contextmanager
def after_every_layer(loaded: LoadedModel, hook_for: Callable[[int], Callable]) -> Iterator[None]:
    """``hook_for(k)`` as a forward hook (with kwargs) on decoder layer k (1-based), removed on exit."""
    handles = [
        layer.register_forward_hook(hook_for(index + 1), with_kwargs=True)
        for index, layer in enumerate(loaded.layers)
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def captured_residuals(
    loaded: LoadedModel,
    layers: Iterable[int] | None = None,
    positions: slice | int | None = -1,
    detach: bool = True,
) -> Iterator[dict[int, torch.Tensor]]:
    """Yield a dict that fills, during forwards in the block, with residual k -> states.

    ``layers``: which residuals (0..L; default all the model runs). ``positions``: -1 (the last
    position, [batch, hidden]), a slice, or None for every position ([batch, seq, hidden]). A later
    forward in the block overwrites an earlier one's states.
    """
    wanted = None if layers is None else set(layers)
    found: dict[int, torch.Tensor] = {}

    def keep(k: int, states: torch.Tensor) -> None:
        if wanted is None or k in wanted:
            picked = states if positions is None else states[:, positions]
            found[k] = picked.detach() if detach else picked

    def hook_for(k: int):
        def after_layer(_module, _args, _kwargs, output):
            keep(k, hidden_of(output))

        return after_layer

    def before_first_block(_module, args, kwargs):
        keep(0, layer_input(args, kwargs))

    # Residual 0 is what the first block itself reads (after any wrapper, e.g. an ablation, changed it).
    first = innermost(loaded.layers[0]).register_forward_pre_hook(before_first_block, with_kwargs=True)
    try:
        with after_every_layer(loaded, hook_for):
            yield found
    finally:
        first.remove()
