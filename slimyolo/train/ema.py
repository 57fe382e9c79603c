"""Exponential moving average of the weights (yolov5's ModelEMA).

The averaged model is what is evaluated and saved as the run's model: it is smoother than
the raw weights. The decay ramps up as ``decay·(1 − exp(−updates/tau))``, so early in training
(or in a short run) the average follows the weights closely; the update count is saved in
checkpoints so that a resumed run continues the same ramp.
"""

from __future__ import annotations

import copy
import math

import torch

from slimyolo.darknet.model import Darknet


class ModelEMA:
    def __init__(self, model: Darknet, decay: float = 0.9999, tau: float = 2000.0, updates: int = 0) -> None:
        self.ema = copy.deepcopy(model).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, updates

    @torch.no_grad()
    def update(self, model: Darknet) -> None:
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.tau))
        current = model.state_dict()
        for name, value in self.ema.state_dict().items():
            if value.dtype.is_floating_point:
                value.mul_(d).add_(current[name].detach(), alpha=1 - d)
            else:
                value.copy_(current[name])
