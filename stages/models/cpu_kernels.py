"""Faster VAE decoding on CPU, with the same arithmetic.

Two places where PyTorch's CPU defaults are slow for video VAEs, both measured on the decode of a batch of
one (every video VAE decodes one video at a time, and Rushes decodes each variant alone):

- **Convolutions.** For a batch of one and a kernel no larger than 3, PyTorch runs its native kernel
  (`slow_conv3d`: unfold, then one matrix product) instead of oneDNN's whenever N*C*D*H <= 20480 (C the
  input channels, D the frames, H the rows). The rule was written for small 2-D inputs; in a causal 3-D
  VAE it catches every layer that sees few channels or few frames at once, and there the native kernel is
  several times slower. `use_onednn_convolutions` sends every `nn.Conv2d`/`nn.Conv3d` of a module to
  oneDNN (`aten::mkldnn_convolution`), the kernel PyTorch itself picks above the threshold.
- **Wan's RMS norm.** `WanRMS_norm` normalizes over the channel dimension of a (N, C, T, H, W) tensor with
  `F.normalize`, whose vector norm over a non-innermost dimension is a slow strided reduction.
  `fast_wan_norms` computes the same x / max(||x||, eps) * scale * gamma + bias with a sum of squares,
  which vectorizes over the contiguous dimensions.

Results equal the defaults up to float rounding (about 1e-6 on the tiny Wan VAE; one uint8 level in a few
pixels per hundred thousand), the same order as a change of thread count. Only float32 inputs on CPU take
the new paths; anything else (CUDA, half precision, padding modes other than zeros, string padding) runs
the module's own code. Figures: bench/RESULTS.md, "Decoding on CPU".
"""
from __future__ import annotations

import types

EPS = 1e-12  # F.normalize's default


def _onednn_conv_forward(self, input, weight, bias):
    import torch

    if (input.device.type != "cpu" or input.dtype != torch.float32 or self.padding_mode != "zeros"
            or isinstance(self.padding, str)):
        return type(self)._conv_forward(self, input, weight, bias)
    return torch.ops.aten.mkldnn_convolution(input, weight, bias, self.padding, self.stride, self.dilation,
                                             self.groups)


def use_onednn_convolutions(module) -> int:
    """Routes the float32 CPU convolutions of `module` (2-D and 3-D) to oneDNN. Returns how many."""
    import torch

    if not torch.backends.mkldnn.is_available():
        return 0
    count = 0
    for m in module.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)) and "_conv_forward" not in vars(m):
            m._conv_forward = types.MethodType(_onednn_conv_forward, m)
            count += 1
    return count


def _fast_wan_norm_forward(self, x):
    import torch

    if not self.channel_first or x.device.type != "cpu" or x.dtype != torch.float32:
        return type(self).forward(self, x)
    normalized = x / x.square().sum(1, keepdim=True).sqrt().clamp_min(EPS)
    return normalized * self.scale * self.gamma + self.bias


def fast_wan_norms(module) -> int:
    """Replaces the channel-first `WanRMS_norm`s of `module` by the same arithmetic, vectorized. Returns
    how many."""
    try:
        from diffusers.models.autoencoders.autoencoder_kl_wan import WanRMS_norm
    except ImportError:
        return 0
    count = 0
    for m in module.modules():
        if isinstance(m, WanRMS_norm) and m.channel_first and "forward" not in vars(m):
            m.forward = types.MethodType(_fast_wan_norm_forward, m)
            count += 1
    return count


def speed_up_cpu_decode(vae) -> dict[str, int]:
    """Both of the above on a VAE that decodes on CPU; a no-op (counts of 0) for one on another device, or
    for a family whose "VAE" is no torch module (the null family)."""
    import torch

    params = next(vae.parameters(), None) if isinstance(vae, torch.nn.Module) else None
    if params is None or params.device.type != "cpu":
        return {"convolutions": 0, "norms": 0}
    return {"convolutions": use_onednn_convolutions(vae), "norms": fast_wan_norms(vae)}
