import torch
from torch import nn

from degl.core.measure import SavedActivationMeter, count_flops, saved_activation_bytes


def test_flops_of_linear_and_conv():
    assert count_flops(nn.Linear(10, 20), torch.zeros(3, 10)) == 2 * 3 * 10 * 20
    conv = nn.Conv2d(2, 4, 3, padding=1)
    assert count_flops(conv, torch.zeros(1, 2, 5, 5)) == 2 * 25 * 4 * 2 * 9


def test_saved_bytes_are_exact_and_released_after_backward():
    linear = nn.Linear(64, 32)
    x = torch.randn(16, 64, requires_grad=True)
    with SavedActivationMeter(exclude=list(linear.parameters())) as meter:
        out = linear(x).sum()
        assert meter.live_bytes == 16 * 64 * 4  # the input is saved for the weight gradient
        out.backward()
        assert meter.live_bytes == 0
    assert meter.peak_bytes == 16 * 64 * 4


def test_shared_storage_is_counted_once():
    # ReLU saves its output, the next Linear saves the same tensor as its input: one storage.
    net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    x = torch.randn(4, 8)
    peak = saved_activation_bytes(net, x)
    assert peak == 2 * 4 * 8 * 4  # x (first Linear) + ReLU output (shared); params excluded
