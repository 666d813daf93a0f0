"""Phase-aware stage 1 (seed 2): the adaptive learning rate eta(t) = eta_0 * S(t) and the phase
penalty lambda * |S_v - S_l|, hooked into the training loop. S(t) compares the model's NTK on a
fixed probe batch of training images with the NTK at the start of the run; that reference kernel is
saved in the run directory, so a resumed run measures against the same one."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch.nn as nn
from safetensors.torch import load_file

from ..data import eval_transform
from .checkpoint import save_tensors
from .config import RunConfig
from .distributed import Runtime
from .loop import DeviceSet

THETA0 = "phase_theta0.safetensors"


@dataclass
class PhaseHooks:
    """The controller (or None when phase-aware training is off) and the model it watches."""

    controller: object | None = None
    net: nn.Module | None = None

    @classmethod
    def build(cls, cfg: RunConfig, net: nn.Module, data: DeviceSet, run: Path, rt: Runtime,
              resumed: dict | None) -> "PhaseHooks":
        """A controller on the first ``phase.probe_size`` training images, when enabled."""
        p = cfg.phase
        if not (p.adaptive_lr or p.penalty > 0):
            return cls()
        from ..phase.controller import PhaseController

        probe = eval_transform(data.images[: p.probe_size], cfg.model.image_size, cfg.data)
        ctl = PhaseController(p, net, probe)
        if resumed is not None:
            ctl.theta0 = load_file(str(run / THETA0))["theta0"].to(ctl.theta0.device)
            ctl.s = resumed.get("phase_S", 1.0)
            ctl.measured_at = resumed.get("phase_measured_at", -1)
        elif rt.is_main:
            save_tensors(run / THETA0, {"theta0": ctl.theta0})
        return cls(ctl, net)

    def loop_hooks(self) -> dict:
        """Keyword arguments for ``train_one_epoch``."""
        if self.controller is None:
            return {}
        ctl, every = self.controller, self.controller.cfg.every
        hooks = {"lr_scale": lambda step: ctl.lr_scale(step, self.net)}
        if ctl.cfg.penalty > 0:  # one double-backward NTK per measurement: as often as S(t) is measured
            hooks["extra_loss"] = lambda model, step: ctl.penalty(model) if step % every == 0 else None
        return hooks

    def state(self) -> dict:
        """Numbers logged with each epoch (empty when off)."""
        return {} if self.controller is None else self.controller.state()
