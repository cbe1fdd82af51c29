"""FrameInit (ConsistI2V, Ren et al. 2024, section 3.3): the start latent's low spatio-temporal frequencies come
from the first frame, diffused to a noise level and repeated over the frames; its high frequencies stay the
start latent's own. Facts from the reference (`consisti2v/utils/frameinit_utils.py` and the pipelines'
`use_frameinit` branch): a Gaussian low-pass filter over (frames, height, width) with normalised stop
frequencies d_s = d_t = 0.25 (ConsistI2V's inference config), the first frame's latent diffused with the
scheduler's `add_noise` to `noise_level` (850 there), both mixed in the centred 3-D FFT domain.
"""

from __future__ import annotations

import torch

SPATIAL_STOP = 0.25  # d_s of the reference's inference config
TEMPORAL_STOP = 0.25  # d_t
DEFAULT_NOISE_LEVEL = 850  # frameinit_kwargs.noise_level of the reference's inference config
_FFT_DIMS = (-3, -2, -1)


def gaussian_low_pass(frames: int, height: int, width: int, d_s: float = SPATIAL_STOP,
                      d_t: float = TEMPORAL_STOP) -> torch.Tensor:
    """[frames, height, width]: exp(-d^2 / (2 d_s^2)), d the distance from the centred spectrum's middle with the
    time axis scaled by d_s / d_t (computed in float64 as the reference's Python floats, then float32)."""
    if d_s == 0 or d_t == 0:
        return torch.zeros(frames, height, width)
    axis = lambda n: 2 * torch.arange(n, dtype=torch.float64) / n - 1  # noqa: E731
    t, h, w = (d_s / d_t) * axis(frames), axis(height), axis(width)
    d_square = t[:, None, None] ** 2 + h[None, :, None] ** 2 + w[None, None, :] ** 2
    return torch.exp(-1 / (2 * d_s**2) * d_square).float()


def mix_frequencies(low_from: torch.Tensor, high_from: torch.Tensor, low_pass: torch.Tensor) -> torch.Tensor:
    """`low_from`'s low frequencies plus `high_from`'s high ones, over the last three dims (frames, h, w)."""
    spectrum = lambda x: torch.fft.fftshift(torch.fft.fftn(x, dim=_FFT_DIMS), dim=_FFT_DIMS)  # noqa: E731
    mixed = spectrum(low_from) * low_pass + spectrum(high_from) * (1 - low_pass)
    return torch.fft.ifftn(torch.fft.ifftshift(mixed, dim=_FFT_DIMS), dim=_FFT_DIMS).real


def frame_init(start: torch.Tensor, first_frame: torch.Tensor, alphas_cumprod: torch.Tensor,
               noise_level: int = DEFAULT_NOISE_LEVEL) -> torch.Tensor:
    """`start` [B, C, F, h, w] with its low frequencies replaced by those of `first_frame` [B, C, 1, h, w] repeated
    over the F frames and diffused to `noise_level` with `start` as the noise (the reference's `add_noise`).
    Computed in float32 (FFTs), returned in `start`'s dtype."""
    source = start.float()
    alpha = alphas_cumprod.to(source.device, torch.float32)[int(noise_level)]
    static = first_frame.to(source.device, torch.float32).expand_as(source)
    diffused = alpha**0.5 * static + (1 - alpha) ** 0.5 * source
    low_pass = gaussian_low_pass(*source.shape[-3:]).to(source.device)
    return mix_frequencies(diffused, source, low_pass).to(start.dtype)
