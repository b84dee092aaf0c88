"""What machine this is: GPUs found, the config that fits it, and the MLPerf platform name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from harness.config import Config, ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass(frozen=True)
class Hardware:
    gpu_name: str  # "" without a GPU
    gpu_count: int
    gpu_memory_gib: float

    @property
    def platform(self) -> str:
        """MLPerf submission_platform, e.g. '8xTesla V100-SXM2-16GB' or '1xCPU'."""
        if self.gpu_count == 0:
            return f"{torch.get_num_threads()}xCPU"
        return f"{self.gpu_count}x{self.gpu_name}"


def detect() -> Hardware:
    if not torch.cuda.is_available():
        return Hardware("", 0, 0.0)
    props = torch.cuda.get_device_properties(0)
    return Hardware(props.name, torch.cuda.device_count(), props.total_memory / 2**30)


def auto_config_path(hw: Hardware) -> Path:
    """The recipe for a node on which run_and_time.sh starts one rank per visible GPU: the 8-GPU
    (DGX-1) recipe on 8 GPUs, the single-GPU recipe on one, the CPU demo without a GPU.

    The DGX-1 recipe's hyperparameters (batch 48, 6 per GPU) do not depend on the GPU model, so any
    8-GPU node runs it; the submission_platform in the log names the GPUs it ran on. No recipe
    exists for other GPU counts: ConfigError names the choices instead of starting N ranks of a
    config that check_matches would then refuse on every rank.
    """
    if hw.gpu_count == 0:
        return CONFIG_DIR / "cpu_demo.yaml"
    if hw.gpu_count == 8:
        return CONFIG_DIR / "dgx1_v100x8.yaml"
    if hw.gpu_count == 1:
        return CONFIG_DIR / "single_gpu.yaml"
    raise ConfigError(
        f"--config auto: no recipe for {hw.gpu_count} GPUs per node ({hw.gpu_name}); configs/ has "
        f"dgx1_v100x8.yaml for 8 GPUs and single_gpu.yaml for 1: make 8 or 1 of them visible "
        f"(CUDA_VISIBLE_DEVICES) or pass --config with a config of run.gpus={hw.gpu_count}"
    )


def check_matches(cfg: Config, hw: Hardware, world_size: int) -> None:
    """A config written for N GPUs per node must run on a node with N GPUs (or on CPU when 0)."""
    if cfg.run.gpus == 0:
        return
    if hw.gpu_count == 0:
        raise ConfigError(f"config '{cfg.run.name}' needs {cfg.run.gpus} GPU(s); none is visible")
    if hw.gpu_count != cfg.run.gpus:
        raise ConfigError(
            f"config '{cfg.run.name}' is for {cfg.run.gpus} GPU(s) per node but this machine has "
            f"{hw.gpu_count} ({hw.gpu_name}); use --config auto or a matching config"
        )
    if world_size % cfg.run.gpus:
        raise ConfigError(
            f"world size {world_size} is not a multiple of run.gpus={cfg.run.gpus} per node"
        )
