"""Training stages: bridge (random labels), probe (reinit | linear | finetune), supervised train."""
from .checkpoint import load_checkpoint, load_full_model, save_checkpoint, save_full_model
from .config import (LabelConfig, OptimConfig, PhaseConfig, ProbeConfig, RunConfig, RuntimeConfig, STAGE_PRESETS,
                     check_run_config)
from .rundir import (MetricsLogger, build_architecture, load_init_weights, load_run_model, open_run,
                     read_metrics, read_run_config, read_summary)
from .stages import run_stage

__all__ = [
    "LabelConfig", "OptimConfig", "PhaseConfig", "ProbeConfig", "RunConfig", "RuntimeConfig", "STAGE_PRESETS",
    "check_run_config", "MetricsLogger", "open_run", "read_metrics", "load_checkpoint", "load_full_model",
    "save_checkpoint", "save_full_model", "build_architecture", "load_init_weights", "load_run_model",
    "read_run_config", "read_summary", "run_stage",
]
