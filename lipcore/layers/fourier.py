"""Circular convolutions as per-frequency matrix products (the FFT machinery of the conv layers).

A circular convolution with c_out x c_in kernels acts on the 2-D rfft of its input as one
c_out x c_in complex matrix per frequency. Frequencies are flattened to a leading batch axis F =
n * (n // 2 + 1) (the rfft2 half-spectrum: the other half is the complex conjugate and needs no
work) so that a whole layer is one batched matmul, run in real arithmetic on a real-block form.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from lipcore.layers.init import torch_default_
from lipcore.layers.reparam import Reparameterized


def kernel_fft(weight: Tensor, n: int) -> Tensor:
    """Frequency response of a centred k x k kernel on an n x n torus.

    weight: (c_out, c_in, k, k) real. Returns (F, c_out, c_in) complex with F = n * (n // 2 + 1):
    the conjugated rfft2 of the kernel zero-padded to n x n and shifted by (k - 1) // 2 pixels, so
    that `apply_response(kernel_fft(w, n), x, n)` is the cross-correlation
    `conv2d(x, w, padding=k//2)` made circular.
    """
    k = weight.shape[-1]
    if k > n:
        raise ValueError(f"kernel {k}x{k} does not fit an input of {n}x{n}")
    shift = (k - 1) // 2
    padded = F.pad(weight, (0, n - k, 0, n - k))
    # Rolling the padded kernel back by `shift` moves its centre tap to the origin: the same phase
    # factor as the reference's shift matrix, without a complex buffer that would have to follow
    # the module across devices and dtypes.
    rolled = torch.roll(padded, shifts=(-shift, -shift), dims=(2, 3))
    return rearrange(torch.fft.rfft2(rolled), "o i h w -> (h w) o i").conj()


def normalized_response(weight: Tensor, n: int, alpha: Tensor) -> Tensor:
    """alpha * W(f) / ||W||_F, the input of the Cayley transform of a circular convolution.

    (F, c_out, c_in) complex in general. A 1x1 kernel (every stride-2 layer with k <= 3) has the
    same response at every frequency, so it is returned once as a real (c_out, c_in) matrix,
    scaled exactly as the F identical copies would be: the layer then mixes channels pixel by
    pixel, with no FFT and one Cayley transform instead of F.
    """
    if weight.shape[-1] == 1:
        w = weight[:, :, 0, 0]
        return w * (alpha / (w.norm() * math.sqrt(n * (n // 2 + 1))))
    wfft = kernel_fft(weight, n)
    return wfft * (alpha / wfft.norm())  # (one pass over the response, not two)


def apply_response(
    m: Tensor, x: Tensor, n: int, bias: Tensor | None = None, block: Callable[[], Tensor] | None = None
) -> Tensor:
    """Apply per-frequency maps m (F, o, i) complex, or one pointwise map m (o, i) real, to x.

    x: (b, i, n, n) real -> (b, o, n, n) real, plus `bias` (o,) per output channel if given. The
    per-frequency product runs as ONE real batched matmul on the real-block form of m
    (`block_matrix`): complex bmm has no bf16 autocast, and this is the path whose gradients training
    relies on. `block`, if given, returns `block_matrix(m)` (an eval-mode layer keeps it beside its
    cached weights, built on first use: it was most of a 1-image forward).
    A float64 forward under no_grad (certification) takes `_apply_certify` instead.
    """
    if m.dim() == 2:
        return F.conv2d(x, m[:, :, None, None].to(x.dtype), _bias(bias, x))
    if x.shape[0] == 0:  # MKL's FFTs refuse an empty batch ("Inconsistent configuration parameters")
        return x.new_zeros(0, m.shape[1], n, n)
    if _certify_path(m, x):
        return _apply_certify(m, x, n, bias)
    blk = block_matrix(m) if block is None else block()
    xf = to_freq(x)
    yf = torch.bmm(xf, blk.to(xf.dtype))
    if bias is None:
        return from_freq(yf, n)
    if yf.dtype not in (torch.float32, torch.float64):
        return from_freq(yf, n) + bias[:, None, None]  # (bf16: n^2 * bias would round in bf16)
    # A constant image is n^2 * bias at frequency 0 (real part) of the rfft2 and nothing elsewhere:
    # added there, the bias costs no data-sized pass forward, and its gradient is read off the
    # spectrum backward. (bmm keeps its inputs for backward, not its output: in place is safe.)
    yf[0, :, 0::2] += (n * n) * bias.to(yf.dtype)
    return from_freq(yf, n)


def _certify_path(m: Tensor, x: Tensor) -> bool:
    """Whether `apply_response` takes `_apply_certify`: a float64 forward under no_grad (what
    lipcore.certify runs). Training, float32 serving and bf16 keep the real-block path and its
    results; so does any forward with grad enabled, so that a model's outputs depend on the grad
    mode only, never on which of its tensors happen to require grad."""
    return x.dtype == torch.float64 and m.dtype == torch.complex128 and not torch.is_grad_enabled()


def _apply_certify(m: Tensor, x: Tensor, n: int, bias: Tensor | None) -> Tensor:
    """`apply_response` for a no-grad float64 forward: the same FFTs and products, cheaper here.

    - The product is a complex128 bmm on the (F, b, i) spectrum with m.mT (a view: BLAS reads the
      transpose), one zgemm_batch instead of the real-block dgemm: half the weight bytes read and
      no 2x2-block redundancy (1.5-2x faster on a 2-core AVX512 box at b = 1..32). Each real output
      component is still one sum of 2i real products (zgemm is not the 3M method), so the rounding
      rule's k = 2i-term inner product of the real-block form (rounding.fft_conv) bounds it as is.
    - The inverse 2-D transform runs as 1-D transforms (`_irfft2_freq_major`), ~1.5x faster than
      MKL's 2-D c2r on the permuted view (bit-identical to it at n = 16, 32; not at every n).
    x: (b, i, n, n) float64 -> (b, o, n, n) float64.
    """
    b, c = x.shape[:2]
    f, o = m.shape[0], m.shape[1]
    xf = torch.fft.rfft2(x).permute(2, 3, 0, 1).contiguous().view(f, b, c)
    yf = torch.bmm(xf, m.mT)  # (F, b, o) complex
    if bias is not None:
        yf[0].real.add_((n * n) * bias.to(x.dtype))  # (as `apply_response`: the DC term, exact n^2)
    return _irfft2_freq_major(yf.view(n, f // n, b, o), n)


def _irfft2_freq_major(z: Tensor, n: int) -> Tensor:
    """irfft2 of a frequency-major half spectrum z (n, n // 2 + 1, b, c) -> (b, c, n, n) real.

    A c2c inverse along the full axis, vectorised over the contiguous (b, c) lines, one permuted
    copy, then the 1-D c2r along the last axis: the row-column steps of a 2-D c2r (whose MKL kernel
    is slow on the permuted view), so rounding.fft_rel's bound (log2 N = 2 log2 n stages) holds.
    The two 1/n normalisations are exact for power-of-two n (CIFAR's 32 and 16); otherwise each
    adds one rounding u, far inside fft_rel's slack (its + 2 stages of eta = 8u).
    """
    y = torch.fft.ifft(z, dim=0).permute(2, 3, 0, 1).contiguous()
    return torch.fft.irfft(y, n=n, dim=-1)


def _bias(bias: Tensor | None, x: Tensor) -> Tensor | None:
    # conv2d wants weight and bias in the input's dtype (float64 certification, bf16 autocast casts
    # them itself)
    return None if bias is None else bias.to(x.dtype)


def block_matrix(m: Tensor) -> Tensor:
    """(F, o, i) complex -> (F, 2i, 2o) real R: per frequency, x @ R = m x with complex numbers as
    interleaved (re, im) pairs (the memory layout of complex tensors), i.e. 2 x 2 blocks
    [[Re m_jk, Im m_jk], [-Im m_jk, Re m_jk]]."""
    mr, mi = m.real.mT, m.imag.mT  # (F, i, o)
    f, i, o = mr.shape
    return torch.stack((torch.stack((mr, mi), -1), torch.stack((-mi, mr), -1)), 2).reshape(f, 2 * i, 2 * o)


def _fft_dtype(x: Tensor) -> Tensor:
    # FFTs have no reduced-precision CPU kernels: under bf16 autocast a matmul output arrives here
    # as bf16 and is widened; float32/float64 pass through untouched.
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def to_freq(x: Tensor) -> Tensor:
    """(b, c, n, n) real -> (F, b, 2c) real: the rfft2, frequency-major, complex as (re, im) pairs.

    One copy: the rfft2 output is permuted to frequency-major order for the batched matmul.
    """
    b, c, n, _ = x.shape
    z = rfft2(_fft_dtype(x)).permute(2, 3, 0, 1).contiguous()  # (n, w, b, c) complex
    return torch.view_as_real(z).reshape(n * (n // 2 + 1), b, 2 * c)


def rfft2(x: Tensor) -> Tensor:
    """torch.fft.rfft2 over the last two dims, with a cheaper backward.

    Autograd's rfft2 backward zero-pads the gradient to the full spectrum and runs a complex FFT of
    it (a data-sized fill, copy and c2c per layer). The adjoint of the half-spectrum transform is one
    irfft2: grad_x = n*m * irfft2(g with its interior columns halved), because irfft2 counts every
    interior column twice (as the column and its conjugate mirror) and the edge columns once.
    """
    if not (x.requires_grad and torch.is_grad_enabled()):
        # the same transform; autograd.Function.apply binds its arguments through inspect.signature
        # (about 0.3 ms of a 6 ms float64 certify forward of one image)
        return torch.fft.rfft2(x)
    return _Rfft2.apply(x)


class _Rfft2(torch.autograd.Function):
    @staticmethod
    def forward(x: Tensor) -> Tensor:  # type: ignore[override]
        return torch.fft.rfft2(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        ctx.shape = inputs[0].shape[-2:]

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        h, w = ctx.shape
        # one data-sized multiply: the column weights and the n*m factor together
        scale = torch.full((grad.shape[-1],), 0.5 * h * w, dtype=grad.real.dtype, device=grad.device)
        scale[0] = h * w
        if w % 2 == 0:
            scale[-1] = h * w  # the Nyquist column has no mirror either
        return torch.fft.irfft2(grad * scale, s=(h, w))


def from_freq(xf: Tensor, n: int) -> Tensor:
    """(F, b, 2c) real (layout of `to_freq`) -> (b, c, n, n) real; inverse of `to_freq`.

    The interleaved layout is a complex tensor already (a view, no copy); irfft2 makes the one
    contiguous copy its c2r transform needs.
    """
    f, b, c2 = xf.shape
    z = torch.view_as_complex(_fft_dtype(xf).contiguous().view(n, f // n, b, c2 // 2, 2))
    return torch.fft.irfft2(z.permute(2, 3, 0, 1), s=(n, n))


class FourierConv(Reparameterized):
    """Shared plumbing of the FFT-based (circular) convolutions: stride, scale and input checks.

    A stride-2 layer first rearranges 2 x 2 pixel blocks into channels (space-to-depth, an
    orthogonal map), then convolves with kernel max(1, k // 2) at half the resolution, as in the
    reference code. `input_size` is the side of the layer's input before that rearrangement; the
    layer's Fourier factors are defined for that size only.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        scale: float,
        input_size: int,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2 (space-to-depth), got {stride}")
        if input_size < 1 or input_size % stride:
            raise ValueError(f"input_size must be a positive multiple of stride {stride}, got {input_size}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        self.scale = float(scale)
        self.input_size = input_size
        self.n = input_size // stride
        self.fft_in_channels = in_channels * stride * stride
        self.kernel_size = max(1, kernel_size // 2) if stride == 2 else kernel_size
        if self.kernel_size > self.n:
            raise ValueError(f"kernel {self.kernel_size} is larger than the {self.n}x{self.n} grid")

    def _enter(self, x: Tensor) -> Tensor:
        """Check the input shape, apply the input scale and the space-to-depth of stride 2."""
        self._check_input(x)
        if self.scale != 1.0:  # (a multiply by 1 would still be a data-sized pass, forward and back)
            x = self.scale * x
        return F.pixel_unshuffle(x, 2) if self.stride == 2 else x

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels or x.shape[2:] != (self.input_size,) * 2:
            raise ValueError(
                f"{type(self).__name__} expects input (batch, {self.in_channels}, {self.input_size}, "
                f"{self.input_size}), got {tuple(x.shape)}"
            )

    def _enter_response(self, m: Tensor, x: Tensor, bias: Tensor | None = None) -> Tensor:
        """`apply_response(m, self._enter(x), self.n, bias)`: (b, in, N, N) -> (b, o, N/s, N/s).

        A pointwise map m (o, 4 in) after the space-to-depth of stride 2 is the 2x2 stride-2
        convolution with kernel m.reshape(o, in, 2, 2) (pixel_unshuffle puts pixel (i, j) of
        channel c at channel 4c + 2i + j), so x goes to the convolution as it is: no rearranged
        copy of the input forward, none of its gradient backward, and `scale` goes into the kernel.
        """
        if self.stride == 2 and m.dim() == 2:
            self._check_input(x)
            w = m.reshape(m.shape[0], self.in_channels, 2, 2)
            if self.scale != 1.0:
                w = self.scale * w
            return F.conv2d(x, w.to(x.dtype), _bias(bias, x), stride=2)
        return apply_response(m, self._enter(x), self.n, bias, self._block(m))

    def _block(self, m: Tensor) -> Callable[[], Tensor] | None:
        """`block_matrix(m)` of a per-frequency response, computed once per eval cache (`derived`),
        on demand: a float64 no-grad forward (`_apply_certify`) never builds it."""
        return None if m.dim() == 2 else functools.partial(self.derived, m, block_matrix)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, scale={self.scale:g}, input_size={self.input_size}"
        )


class CayleyConv(FourierConv):
    """A circular convolution whose kernel feeds one Cayley transform per frequency (Orthogon,
    Sandwich): `weight` (out, fft_in + extra_columns(), k_eff, k_eff), `bias` (out), torch's default
    initialisation, and `alpha` = ||W(f)||_F, so the first transform is of the kernel's own response.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        scale: float = 1.0,
        *,
        input_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, scale, input_size)
        k, cin = self.kernel_size, self.fft_in_channels + self.extra_columns()
        self.weight = nn.Parameter(torch.empty(out_channels, cin, k, k, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(out_channels, device=device, dtype=dtype))
        torch_default_(self.weight, self.bias)
        self.alpha = nn.Parameter(kernel_fft(self.weight.detach(), self.n).norm().clone())

    def extra_columns(self) -> int:
        """Kernel input channels beyond the layer's own: 0 (an orthogonal Q(f) of the input)."""
        return 0
