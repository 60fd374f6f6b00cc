"""NVML device mapping and the CPU fallback."""

import torch

from baton.profile.gpu import GpuMonitor, nvml_index, peak_flops


def test_cuda_visible_devices_maps_to_nvml():
    assert nvml_index(0, None) == 0
    assert nvml_index(1, "3,5") == 5
    assert nvml_index(0, "GPU-8d1a,GPU-77") == "GPU-8d1a"
    assert nvml_index(2, "") == 2


def test_cpu_reads_nothing_and_says_so_once(capsys):
    monitor = GpuMonitor(torch.device("cpu"))
    assert monitor.read() == {} and monitor.read() == {}
    assert capsys.readouterr().err.count("GPU telemetry off: no GPU") == 1
    assert peak_flops(torch.device("cpu")) is None and peak_flops(torch.device("cpu"), 2.0) == 2e12
