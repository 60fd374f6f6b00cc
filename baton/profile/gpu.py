"""GPU telemetry through NVML (nvidia-ml-py), and peak FLOP rates for MFU.

NVML numbers its GPUs by PCI order and ignores ``CUDA_VISIBLE_DEVICES``; the CUDA device
this rank uses is found through the UUID or index that variable lists.
"""

from __future__ import annotations

import os
import sys

import torch

# Dense bf16 tensor-core peak, FLOP/s, by a substring of the device name.
PEAK_BF16 = {
    "H200": 989e12,
    "H100 SXM": 989e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 125e12,
    "V100": 125e12,
}


def peak_flops(device: torch.device, override_tflops: float = 0.0) -> float | None:
    """The configured peak, or the table's entry for this GPU; None where unknown (CPU)."""
    if override_tflops > 0:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16.items() if key in name), None)


def nvml_index(cuda_index: int, visible: str | None) -> str | int:
    """NVML handle key (index or UUID) for CUDA device ``cuda_index`` under ``visible``."""
    if not visible:
        return cuda_index
    entries = [e.strip() for e in visible.split(",") if e.strip()]
    entry = entries[cuda_index]
    return int(entry) if entry.isdigit() else entry


class GpuMonitor:
    """Reads utilisation, SM clock, power, energy, temperature and memory of this rank's
    GPU. Without a GPU or NVML it reads nothing and says so once."""

    def __init__(self, device: torch.device, announce: bool = True) -> None:
        self.handle, self.nvml = None, None
        reason = None
        if device.type != "cuda":
            reason = "no GPU"
        else:
            try:
                import pynvml

                pynvml.nvmlInit()
                key = nvml_index(device.index or 0, os.environ.get("CUDA_VISIBLE_DEVICES"))
                self.handle = (
                    pynvml.nvmlDeviceGetHandleByUUID(key)
                    if isinstance(key, str)
                    else pynvml.nvmlDeviceGetHandleByIndex(key)
                )
                self.nvml = pynvml
            except Exception as exc:  # NVML missing or refusing: profiling goes on without it
                reason = f"NVML unavailable ({exc})"
        if reason and announce:
            print(f"baton: GPU telemetry off: {reason}", file=sys.stderr, flush=True)

    def read(self) -> dict:
        if self.handle is None:
            return {}
        n, h = self.nvml, self.handle
        util = n.nvmlDeviceGetUtilizationRates(h)
        mem = n.nvmlDeviceGetMemoryInfo(h)
        return {
            "gpu_util": util.gpu,
            "sm_clock_mhz": n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM),
            "power_w": n.nvmlDeviceGetPowerUsage(h) / 1e3,
            "energy_j": n.nvmlDeviceGetTotalEnergyConsumption(h) / 1e3,
            "temp_c": n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU),
            "gpu_mem_used_gb": mem.used / 2**30,
        }
