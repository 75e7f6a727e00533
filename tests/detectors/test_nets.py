"""The heatmap network: output shape for each stride, and its FLOP count."""

from __future__ import annotations

import pytest
import torch

from detectors.nets import HeatmapNet, build, count_flops


@pytest.mark.parametrize("stride", [2, 4, 8])
def test_output_is_one_logit_per_stride_cell(stride: int) -> None:
    torch.manual_seed(0)
    net = build(3, width=2, stride=stride).eval()
    with torch.inference_mode():
        out = net(torch.randn(1, 3, 32, 48))
    assert out.shape == (1, 1, 32 // stride, 48 // stride)
    assert out.dtype == torch.float32


def test_batches_are_independent_in_eval_mode() -> None:
    torch.manual_seed(0)
    net = build(1, width=2, stride=4).eval()
    x = torch.randn(3, 1, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(net(x)[1:2], net(x[1:2]), atol=1e-5)


@pytest.mark.parametrize(("stride", "width"), [(3, 4), (16, 4), (2, 0)])
def test_bad_arguments_are_named(stride: int, width: int) -> None:
    with pytest.raises(ValueError, match='"stride"' if width else '"width"'):
        HeatmapNet(1, width=width, stride=stride)


def test_count_flops_is_positive_and_scales_with_area() -> None:
    net = build(2, width=2, stride=4).eval()
    small = count_flops(net, (2, 32, 32))
    large = count_flops(net, (2, 64, 64))
    assert small > 0
    assert large == pytest.approx(4 * small, rel=1e-6)
    # The hooks are removed: a later forward pass does not add to anything.
    assert count_flops(net, (2, 32, 32)) == small
