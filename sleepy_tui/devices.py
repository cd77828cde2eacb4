"""Which torch device to use: the one asked for (checked), else cuda, then mps, then cpu; and how many CPUs
this process may use."""

from __future__ import annotations

import os


class DeviceError(ValueError):
    """The device asked for is not available here (one line)."""


def pick_device(preferred: str = "") -> str:
    import torch
    mps_ok = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if preferred:
        kind = preferred.split(":")[0]
        if kind == "cuda" and not torch.cuda.is_available():
            raise DeviceError(f"device {preferred!r}: this torch ({torch.__version__}) sees no CUDA GPU")
        if kind == "mps" and not mps_ok:
            raise DeviceError(f"device {preferred!r}: MPS is not available here")
        if kind not in ("cpu", "cuda", "mps", "xpu"):
            raise DeviceError(f"device: unknown {preferred!r} (cpu | cuda | cuda:N | mps, or empty)")
        return preferred
    if torch.cuda.is_available():
        return "cuda"
    return "mps" if mps_ok else "cpu"


def usable_cpus() -> int:
    """The CPUs this process may use (containers, taskset), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux reports them (/proc/cpuinfo `flags`, or `Features` on ARM); empty
    elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        pass
    return set()


def fast_bf16(device: str) -> bool:
    """Whether bfloat16 matrix products run in hardware on `device`: a CUDA GPU that supports them, or a CPU
    with AVX-512 BF16 / AMX (x86) or the BF16 extension (ARM). Elsewhere torch emulates them, slower than
    float32."""
    import torch
    kind = device.split(":")[0]
    if kind == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if kind != "cpu":
        return False
    flags = cpu_flags()
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
