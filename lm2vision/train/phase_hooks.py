"""Phase-aware stage 1 (seed 2): the adaptive learning rate eta(t) = eta_0 * S(t) and the phase
penalty lambda * |S_v - S_l|, hooked into the training loop (settings: ``RunConfig.phase``).

S(t) = S(Theta_t, Theta_0), the kernel similarity between the model's empirical NTK now and at
the start, both on one fixed probe batch (the first ``probe_size`` training images).
``lr_scale`` returns S(t), re-measured every ``every`` steps. The penalty's S_v = S(t) of the model
being bridged (differentiable) and S_l = ``target``, the language side's stability (measured apart,
e.g. by ``lm2v phase``; the seed suggests starting both near 0.6). S(t) = 1 is a maximum of S, so the
penalty has zero gradient at initialisation: it acts once training has moved the kernel.

Kernel: NTK over the parameters that require grad when the controller is built (what the stage
trains), of the pooled embedding for a ``VisionBackbone`` (projected to ``OUT_DIM`` by a fixed
random matrix) or of the flattened output for any other module; measured in eval mode, on the
model inside its DDP / ``torch.compile`` wrappers. The reference kernel Theta_0 is saved in the run
directory, so a resumed run measures against the same one.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file

from ..config import validate
from ..data import eval_transform
from ..errors import Lm2vError
from ..phase.encoders import VisionEmbedder
from ..phase.ntk import NTKConfig, empirical_ntk
from ..phase.similarity import kernel_similarity, kernel_similarity_t
from .checkpoint import save_tensors
from .config import PhaseConfig, RunConfig
from .distributed import Runtime, unwrap
from .loop import DeviceSet, StreamSet

THETA0 = "phase_theta0.safetensors"
OUT_DIM = 8  # output projection of a backbone's pooled embedding for the probe kernel


class _Flat(nn.Module):
    """Any module's output flattened to (B, O)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).flatten(1)


class PhaseController:
    """Measures S(t) on a probe batch; gives the lr scale and the phase penalty of stage 1."""

    def __init__(self, cfg: PhaseConfig, model: nn.Module, probe_images: torch.Tensor):
        validate(cfg, "phase")  # a config built in Python skips load_config
        if cfg.penalty > 0 and cfg.target is None:
            raise Lm2vError("phase.penalty > 0 needs phase.target (S_l, the language side's stability)")
        if probe_images.shape[0] < cfg.probe_size:
            raise Lm2vError(f"need {cfg.probe_size} probe images, got {probe_images.shape[0]}")
        self.cfg = cfg
        self.probe = probe_images[: cfg.probe_size].detach()
        self.ntk_cfg = NTKConfig(vjp_max_work=0)  # jacobian if it fits, else projection (fixed sketch)
        net = self._net(model)
        kernel = set(net.ntk_names()) if isinstance(net, VisionEmbedder) else None  # head and fixed tables out
        self.names = [n for n, p in net.named_parameters() if p.requires_grad and (kernel is None or n in kernel)]
        if not self.names:
            raise Lm2vError("phase controller: no trainable parameter shapes the model's output")
        self.theta0 = self._ntk(net)  # (n, n)
        self.s, self.measured_at, self.last_penalty = 1.0, -1, 0.0

    # -- kernels -----------------------------------------------------------------------------
    def _net(self, model: nn.Module) -> nn.Module:
        # parameter names must not depend on the wrappers: the loop passes the compiled step
        # function, the controller was built on the plain (or DDP) model
        model = unwrap(model)
        if hasattr(model, "forward_features") and hasattr(model, "pool"):
            return VisionEmbedder(model, out_dim=min(OUT_DIM, model.width)).to(self.probe.device)
        return _Flat(model)

    def _ntk(self, net: nn.Module, differentiable: bool = False) -> torch.Tensor:
        was_training = net.training
        net.eval()
        try:
            with torch.set_grad_enabled(differentiable):
                return empirical_ntk(net, self.probe, cfg=self.ntk_cfg, names=self.names, differentiable=differentiable)
        finally:
            net.train(was_training)

    def measure(self, model: nn.Module) -> float:
        """S(Theta_now, Theta_init) on the probe batch."""
        return kernel_similarity(self._ntk(self._net(model)), self.theta0)

    # -- the three calls of the training loop ---------------------------------------------------
    def lr_scale(self, step: int, model: nn.Module) -> float:
        """Re-measure S(t) when ``step`` is a multiple of ``every``; return the latest S(t)
        (or 1.0 when ``adaptive_lr`` is off, S(t) is still measured and logged)."""
        if step % self.cfg.every == 0 and step != self.measured_at:
            self.s, self.measured_at = self.measure(model), step
        return self.s if self.cfg.adaptive_lr else 1.0

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        """lambda * |S(t) - target| as a differentiable scalar, or None when the penalty is off.

        Costs one probe NTK with its graph (double backward); call it as often as affordable."""
        if self.cfg.penalty == 0:
            return None
        theta = self._ntk(self._net(model), differentiable=True)
        s = kernel_similarity_t(theta, self.theta0.to(theta.dtype))
        loss = self.cfg.penalty * (s - self.cfg.target).abs()
        self.last_penalty = float(loss.detach())
        return loss

    def state(self) -> dict:
        """Numbers to log with the run."""
        return {
            "phase_S": self.s,
            "phase_lr_scale": self.s if self.cfg.adaptive_lr else 1.0,
            "phase_penalty": self.last_penalty,
            "phase_measured_at": self.measured_at,
        }


@dataclass
class PhaseHooks:
    """The controller (or None when phase-aware training is off) and the model it watches."""

    controller: PhaseController | None = None
    net: nn.Module | None = None

    @classmethod
    def build(cls, cfg: RunConfig, net: nn.Module, data: DeviceSet | StreamSet, run: Path, rt: Runtime,
              resumed: dict | None) -> "PhaseHooks":
        """A controller on the first ``phase.probe_size`` training images, when enabled."""
        p = cfg.phase
        if not (p.adaptive_lr or p.penalty > 0):
            return cls()
        probe = eval_transform(data.first(p.probe_size), cfg.model.image_size, cfg.data)
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
