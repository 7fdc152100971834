"""Helpers shared by the layer tests."""
import torch


def in_pieces(layer, x, sizes):
    """Runs x [B, T, D] through the layer in consecutive pieces of the given sizes, passing the state."""
    state, ys = None, []
    for piece in x.split(sizes, dim=1):
        y, state = layer(piece, state)
        ys.append(y)
    return torch.cat(ys, dim=1), state


def parameter_grads(layer, run, weights):
    """name -> gradient of sum(run() * weights) for every parameter of the layer."""
    layer.zero_grad(set_to_none=True)
    (run() * weights).sum().backward()
    return {n: p.grad for n, p in layer.named_parameters()}
