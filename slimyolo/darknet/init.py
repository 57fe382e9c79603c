"""Random but realistic weights, for tests and benchmarks when no trained model exists.

Plain random BN statistics (mean 0, variance 1) make activations explode or vanish through a
hundred layers, which hides numerical bugs behind infinities or zeros. Instead the running
mean and variance are *measured* on random images (as a BN layer would learn them), and γ, β
are drawn per channel, so every layer carries non-trivial, channel-specific statistics and
activations of ordinary magnitude at any depth.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from slimyolo.darknet.model import Darknet


@torch.no_grad()
def init_random_weights(model: Darknet, seed: int = 0) -> Darknet:
    """Initialise ``model`` in place (deterministic for a ``seed``) and return it in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    for _, block in model.conv_blocks():
        w = block.conv.weight
        fan_in = w.shape[1] * w.shape[2] * w.shape[3]
        w.copy_(torch.randn(w.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
        if block.bn is not None:
            block.bn.weight.copy_(torch.empty(w.shape[0]).uniform_(0.5, 1.5, generator=gen))
            block.bn.bias.copy_(torch.randn(w.shape[0], generator=gen) * 0.1)
        else:
            assert block.conv.bias is not None
            block.conv.bias.copy_(torch.randn(w.shape[0], generator=gen) * 0.1)
    # Measure the BN statistics on random images at the model's input size: at a much smaller
    # size the deep layers see 1x1 or 2x2 maps whose statistics do not carry over.
    h, w = model.input_size
    images = torch.rand((2, model.graph.input_shape[0], h, w), generator=gen)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration pass
    model.train()
    model(images)
    for bn, momentum in zip(bns, momenta, strict=True):
        bn.momentum = momentum
    return model.eval()


@torch.no_grad()
def sparsify_gammas(model: Darknet, near_zero: float | Callable[[float], float], seed: int = 0,
                    large: tuple[float, float] = (0.05, 1.5)) -> Darknet:
    """Give every BN |γ| the distribution sparsity training aims for, to study pruning without training.

    Each channel is, with probability ``near_zero``, uniform in [0, 1e-3), otherwise
    log-uniform in ``large``; β and the running statistics are kept. ``near_zero`` may be a
    function of the layer's relative depth in [0, 1] (trained detectors keep their early,
    high-resolution layers wider than their deep ones). The benchmarks use this stated
    distribution for the original projects' best pruning points.
    """
    fraction = near_zero if callable(near_zero) else (lambda _depth: near_zero)
    blocks = [(i, b) for i, b in model.conv_blocks() if b.bn is not None]
    depth = len(model.graph.specs) - 1 or 1
    if not all(0.0 <= fraction(i / depth) <= 1.0 for i, _ in blocks):
        raise ValueError(f"near_zero must be a fraction in [0, 1], got {near_zero}")
    gen = torch.Generator().manual_seed(seed)
    lo, hi = math.log(large[0]), math.log(large[1])
    for i, block in blocks:
        if block.bn is not None:
            n = block.bn.weight.numel()
            small = torch.rand(n, generator=gen) < fraction(i / depth)
            big = torch.exp(torch.empty(n).uniform_(lo, hi, generator=gen))
            block.bn.weight.copy_(torch.where(small, torch.rand(n, generator=gen) * 1e-3, big))
    return model
