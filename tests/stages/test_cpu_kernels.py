"""stages/models/cpu_kernels.py: the decode's CPU kernels give PyTorch's own results and skip its slow paths."""
from __future__ import annotations

import pytest
import torch
from torch.profiler import profile

from stages.models.cpu_kernels import fast_wan_norms, speed_up_cpu_decode, use_onednn_convolutions


def kernels(fn) -> set[str]:
    with profile() as prof:
        fn()
    return {e.key for e in prof.key_averages()}


@pytest.mark.parametrize("make, shape", [
    (lambda: torch.nn.Conv3d(8, 8, 3), (1, 8, 3, 40, 52)),  # under PyTorch's threshold: its native kernel
    (lambda: torch.nn.Conv3d(4, 6, (3, 1, 1), bias=False), (1, 4, 5, 20, 20)),
    (lambda: torch.nn.Conv3d(8, 8, 3, stride=(1, 2, 2), padding=1, dilation=1), (1, 8, 4, 30, 30)),
    (lambda: torch.nn.Conv3d(8, 8, 3, groups=2, padding=(0, 1, 1)), (2, 8, 3, 16, 16)),
    (lambda: torch.nn.Conv2d(8, 16, 3, padding=1), (1, 8, 30, 52)),
])
def test_convolutions_through_onednn_equal_pytorchs(make, shape):
    torch.manual_seed(0)
    conv = make().eval()
    x = torch.randn(shape)
    with torch.no_grad():
        expected = conv(x)
        assert use_onednn_convolutions(conv) == 1
        got = conv(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    used = kernels(lambda: conv(x))
    assert "aten::mkldnn_convolution" in used and not any("slow_conv" in k for k in used)


def test_other_inputs_run_the_modules_own_code():
    conv = torch.nn.Conv3d(4, 4, 3, padding=1, padding_mode="replicate")
    x = torch.randn(1, 4, 3, 8, 8)
    expected = conv(x)
    use_onednn_convolutions(conv)
    torch.testing.assert_close(conv(x), expected)  # replicate padding: PyTorch's own path, same result
    half = torch.nn.Conv3d(4, 4, 3).to(torch.bfloat16)
    xh = torch.randn(1, 4, 3, 8, 8, dtype=torch.bfloat16)
    expected = half(xh)
    use_onednn_convolutions(half)
    assert torch.equal(half(xh), expected)  # bfloat16: PyTorch's own dispatch, bit for bit
    assert use_onednn_convolutions(conv) == 0  # never patched twice


def test_wan_rms_norm_vectorized_equals_diffusers():
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanRMS_norm

    torch.manual_seed(0)
    norm = WanRMS_norm(8, channel_first=True, images=False, bias=True)
    with torch.no_grad():
        norm.gamma.normal_()
        norm.bias.normal_()
    x = torch.randn(1, 8, 3, 10, 12)
    x[0, :, 0, 0, 0] = 0.0  # a zero vector: the eps clamp, as F.normalize
    expected = norm(x)
    assert fast_wan_norms(norm) == 1
    torch.testing.assert_close(norm(x), expected, rtol=1e-5, atol=1e-6)
    assert "aten::linalg_vector_norm" not in kernels(lambda: norm(x))
    x16 = x.to(torch.bfloat16)
    torch.testing.assert_close(norm(x16), type(norm).forward(norm, x16))  # other dtypes: diffusers' own code


def test_the_tiny_wan_vae_decodes_the_same_frames_without_the_slow_kernels(model_cache):
    from diffusers import AutoencoderKLWan

    from stages.models.checkpoints import resolve_model_path

    vae = AutoencoderKLWan.from_pretrained(resolve_model_path("builtin:tiny-wan"), subfolder="vae").eval()
    torch.manual_seed(0)
    z = torch.randn(1, vae.config.z_dim, 3, 12, 16)
    with torch.no_grad():
        before = kernels(lambda: vae.decode(z))
        expected = vae.decode(z).sample
        counts = speed_up_cpu_decode(vae)
        after = kernels(lambda: vae.decode(z))
        got = vae.decode(z).sample
    assert counts["convolutions"] > 0 and counts["norms"] > 0
    assert "aten::slow_conv3d_forward" in before and "aten::linalg_vector_norm" in before
    assert not any("slow_conv" in k for k in after) and "aten::linalg_vector_norm" not in after
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    as_uint8 = lambda v: ((v.clamp(-1, 1) + 1) * 127.5).round()  # noqa: E731
    assert (as_uint8(got) - as_uint8(expected)).abs().max() <= 1


def test_a_vae_that_is_no_torch_module_is_left_alone():
    assert speed_up_cpu_decode("null-vae") == {"convolutions": 0, "norms": 0}  # the null family's stand-in
