"""The lesion segmentation network: a compact 2.5D U-Net.

Input is a stack of neighbouring axial slices, each shown through two HU windows (lung and soft
tissue), so ``in_channels = CONTEXT_SLICES * len(WINDOWS)``. Neighbouring slices let the network
tell a vessel (which continues, shifting, into the next slice) from a nodule (which ends). Output
is one logit per pixel of the centre slice: "this pixel belongs to a lesion".

The net is deliberately small (~85k parameters) so that it trains in minutes and infers a 256x256
slice in ~10 ms on two CPU cores; ``fuse_for_inference`` folds BatchNorm into the convolutions for
that speed.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval

logger = logging.getLogger(__name__)

# (window centre, window width) in HU: lung and mediastinal/soft tissue windows.
WINDOWS: tuple[tuple[float, float], ...] = ((-500.0, 1500.0), (40.0, 400.0))
CONTEXT_SLICES = 3  # the slice itself and one neighbour on each side
IN_CHANNELS = CONTEXT_SLICES * len(WINDOWS)
DEFAULT_WIDTHS: tuple[int, int, int, int] = (8, 16, 32, 48)


def _conv_bn_relu(in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class LesionUNet(nn.Module):
    """Four-level U-Net with strided-convolution downsampling and nearest upsampling.

    Input height and width must be multiples of 8.
    """

    def __init__(self, in_channels: int = IN_CHANNELS,
                 widths: tuple[int, int, int, int] = DEFAULT_WIDTHS) -> None:
        super().__init__()
        c0, c1, c2, c3 = widths
        self.in_channels = in_channels
        self.widths = widths
        self.stem = _conv_bn_relu(in_channels, c0)
        self.enc1 = nn.Sequential(_conv_bn_relu(c0, c1, 2), _conv_bn_relu(c1, c1))
        self.enc2 = nn.Sequential(_conv_bn_relu(c1, c2, 2), _conv_bn_relu(c2, c2))
        self.enc3 = nn.Sequential(_conv_bn_relu(c2, c3, 2), _conv_bn_relu(c3, c3))
        self.dec2 = _conv_bn_relu(c3 + c2, c2)
        self.dec1 = _conv_bn_relu(c2 + c1, c1)
        self.dec0 = _conv_bn_relu(c1 + c0, c0)
        self.head = nn.Conv2d(c0, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = self.stem(x)
        x1 = self.enc1(x0)
        x2 = self.enc2(x1)
        x3 = self.enc3(x2)
        u = self.dec2(torch.cat([F.interpolate(x3, scale_factor=2.0), x2], dim=1))
        u = self.dec1(torch.cat([F.interpolate(u, scale_factor=2.0), x1], dim=1))
        u = self.dec0(torch.cat([F.interpolate(u, scale_factor=2.0), x0], dim=1))
        return self.head(u)



class PackagedLesionUNet(LesionUNet):
    """The lesion network as a model package presents it (architecture `lesion-detector`): the
    same parameters as `LesionUNet` (one state dict serves both), held to the package input
    contract of `ai_services.sandbox` and its detection output.

    A package's channels come window by window (every slice through the first window, then every
    slice through the next); the network was trained on them slice by slice (each slice through
    every window), so they are put back in that order first. The output is the per-pixel lesion
    probability (0..1), not the logit, as a detection package's map is.
    """

    def __init__(self, in_channels: int = IN_CHANNELS, widths: tuple[int, int, int, int] = DEFAULT_WIDTHS,
                 n_windows: int = len(WINDOWS)) -> None:
        super().__init__(in_channels, widths)
        if n_windows < 1 or in_channels % n_windows:
            raise ValueError(f"{in_channels} input channels are not a whole number of slices times {n_windows} windows")
        self.n_windows = n_windows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        slice_major = (x.reshape(batch, self.n_windows, channels // self.n_windows, height, width)
                       .transpose(1, 2).reshape(batch, channels, height, width))
        return torch.sigmoid(super().forward(slice_major))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """Fold every Conv+BatchNorm pair into one conv (eval mode only); returns the same module."""
    model.eval()
    for name, child in model.named_children():
        if (isinstance(child, nn.Sequential) and len(child) == 3
                and isinstance(child[0], nn.Conv2d) and isinstance(child[1], nn.BatchNorm2d)):
            setattr(model, name, nn.Sequential(fuse_conv_bn_eval(child[0], child[1]), child[2]))
        else:
            fuse_for_inference(child)
    return model
