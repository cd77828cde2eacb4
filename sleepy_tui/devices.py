"""Which torch device to use: the one asked for (checked), else cuda, then mps, then cpu."""

from __future__ import annotations


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
