"""One line naming the machine a benchmark ran on: host, CPU model, cores, GPU, torch threads, load."""
from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(with_torch: bool = True, extra: str = "") -> str:
    """`with_torch=False` keeps torch out of a process whose own memory is being measured."""
    parts = [platform.node(), platform.platform(), cpu_model(), f"{os.cpu_count()} cores"]
    if with_torch:
        import torch

        parts += [torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU",
                  f"torch {torch.__version__} ({torch.get_num_threads()} threads)"]
    if extra:
        parts.append(extra)
    parts.append("load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))
    return " | ".join(parts)
