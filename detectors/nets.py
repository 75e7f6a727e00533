"""The small fully convolutional network every shipped detector uses.

A U-Net-shaped encoder-decoder built from torchvision's ``Conv2dNormActivation``:
the stem already halves the resolution (cheap enough for a 40-slice head CT on
two CPU cores), the encoder goes to 1/16 with a dilated block for context
(where a bright spot sits matters: inside the skull or in it), and the decoder
climbs back to the card's output stride with skip connections. Output: one raw
logit per heatmap cell; no sigmoid, no thresholds (the detector owns those).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import Conv2dNormActivation


def _block(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        Conv2dNormActivation(cin, cout, 3, stride=stride, activation_layer=nn.ReLU),
        Conv2dNormActivation(cout, cout, 3, dilation=dilation, activation_layer=nn.ReLU),
    )


class HeatmapNet(nn.Module):
    """(batch, in_channels, H, W) -> (batch, 1, H / stride, W / stride) logits; H, W multiples of 16."""

    def __init__(self, in_channels: int, width: int = 16, stride: int = 2) -> None:
        super().__init__()
        if stride not in (2, 4, 8):
            raise ValueError(f'Argument "stride" must be 2, 4 or 8, got {stride}')
        if width < 1:
            raise ValueError(f'Argument "width" must be positive, got {width}')
        w = width
        self.stride = stride
        self.enc = nn.ModuleList(
            [
                _block(in_channels, w, stride=2),  # 1/2
                _block(w, 2 * w, stride=2),  # 1/4
                _block(2 * w, 4 * w, stride=2),  # 1/8
                _block(4 * w, 4 * w, stride=2, dilation=2),  # 1/16
            ]
        )
        # Decoder: 1/16 -> 1/8 -> ... -> 1/stride, each step fusing the encoder map of that scale.
        chans = [w, 2 * w, 4 * w, 4 * w]
        self.dec = nn.ModuleList()
        level, cur = 3, chans[3]
        while 2 ** (level + 1) > stride:  # feats[level] is at 1/2**(level+1)
            skip = chans[level - 1]
            self.dec.append(Conv2dNormActivation(cur + skip, skip, 3, activation_layer=nn.ReLU))
            cur, level = skip, level - 1
        self.head = nn.Conv2d(cur, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = []
        for block in self.enc:
            x = block(x)
            feats.append(x)
        level = 3
        for fuse in self.dec:
            skip = feats[level - 1]
            x = nn.functional.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = fuse(torch.cat([x, skip], dim=1))
            level -= 1
        return self.head(x)


def build(in_channels: int, width: int = 16, stride: int = 2) -> HeatmapNet:
    """The builder the cards name (``[network] arch = "heatmap-unet"``)."""
    return HeatmapNet(in_channels, width=width, stride=stride)


def count_flops(module: nn.Module, item_shape: tuple[int, int, int]) -> float:
    """Multiply-adds x 2 of one forward pass on one item, counted over convolutions (for benchmarks)."""
    total = 0.0

    def hook(mod: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(mod, nn.Conv2d):
            kh, kw = mod.kernel_size
            total += 2.0 * output.numel() * (mod.in_channels // mod.groups) * kh * kw

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.inference_mode():
            module(torch.zeros(1, *item_shape, device=next(module.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    return total
