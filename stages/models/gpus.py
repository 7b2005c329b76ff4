"""The GPUs a plan knows by name: memory and dense bf16 peak (no torch import: the CLI lists them)."""
from __future__ import annotations

# name: (memory GiB as CUDA reports it, dense BF16 tensor TFLOP/s with FP32 accumulate, datasheet).
# H100 SXM 80GB: 989 TFLOPS (1,979 with sparsity), NVIDIA H100 Tensor Core GPU datasheet; nvidia-smi 81,559 MiB.
# H200 SXM 141GB: 989 TFLOPS (1,979 sparse), NVIDIA H200 datasheet; 143,771 MiB.
# A100 80GB / 40GB: 312 TFLOPS (624 sparse), NVIDIA A100 datasheet; 81,920 / 40,960 MiB.
# L40S 48GB: 362.05 TFLOPS (733 sparse), NVIDIA L40S datasheet; 46,068 MiB.
# RTX 4090 24GB: 165.2 TFLOPS with FP32 accumulate (330.3 with FP16 accumulate), NVIDIA Ada GPU architecture
# whitepaper, appendix table; 24,564 MiB.
GPU_TABLE = {"h100-80gb": (79.6, 989.0), "h200-141gb": (140.4, 989.0), "a100-80gb": (80.0, 312.0),
              "a100-40gb": (40.0, 312.0), "l40s-48gb": (45.0, 362.05), "rtx4090-24gb": (24.0, 165.2)}
