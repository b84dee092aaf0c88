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
    """The config matching the hardware: the DGX-1 recipe on 8 V100s, the single-GPU recipe on
    any other GPU machine, the CPU demo without a GPU."""
    if hw.gpu_count == 0:
        return CONFIG_DIR / "cpu_demo.yaml"
    if hw.gpu_count == 8 and "V100" in hw.gpu_name:
        return CONFIG_DIR / "dgx1_v100x8.yaml"
    return CONFIG_DIR / "single_gpu.yaml"


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
