"""Patch moments by shifts equal the im2col ones, and calibration uses them only where they apply."""

import pytest
import torch
from torch import nn

from lrdlab.lowrank.calibration_fit import Moments
from lrdlab.lowrank.calibration_patches import patch_moment, shift_moment_applies
from lrdlab.lowrank.data_aware import input_rows


@pytest.mark.parametrize(("kernel", "padding", "size"), [
    ((3, 3), (1, 1), (8, 7)), ((3, 3), (0, 0), (6, 6)), ((5, 5), (2, 2), (9, 8)), ((3, 1), (1, 0), (5, 6)),
    ((5, 3), (1, 2), (7, 6)), ((2, 2), (1, 0), (5, 5)), ((3, 3), (3, 3), (4, 4)),
])
def test_shift_moments_equal_the_im2col_ones(kernel, padding, size):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 5, kernel, padding=padding)
    x, y = torch.randn(3, 4, *size), torch.randn(3, 4, *size)
    assert shift_moment_applies(conv, 1)
    cols_x, cols_y = input_rows(conv, x), input_rows(conv, y)
    torch.testing.assert_close(patch_moment(conv, x, y), cols_x @ cols_y.T, rtol=1e-12, atol=1e-12)
    gram = patch_moment(conv, y, y)
    torch.testing.assert_close(gram, cols_y @ cols_y.T, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gram, gram.T, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("conv", [nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.Conv2d(4, 4, 3, dilation=2),
                                  nn.Conv2d(4, 4, 3, padding="same"), nn.Conv2d(4, 4, 1),
                                  nn.Conv2d(4, 4, 3, padding=1, groups=2),
                                  nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect")])
def test_other_convs_keep_im2col(conv):
    assert not shift_moment_applies(conv, 1)


def test_moments_of_a_stride1_conv_equal_the_im2col_sums():
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 6, 3, padding=1)
    x_hat, x = torch.randn(2, 3, 6, 6), torch.randn(2, 3, 6, 6)
    m = Moments()
    m.add(conv, x_hat, x)
    m.add(conv, x_hat, x)
    cols_hat, cols = input_rows(conv, x_hat), input_rows(conv, x)
    torch.testing.assert_close(m.gram, 2 * cols_hat @ cols_hat.T)
    torch.testing.assert_close(m.cross, 2 * cols @ cols_hat.T)
    assert m.rows == 2 * cols_hat.shape[1] and m.images == 4
    assert not shift_moment_applies(conv, 2)  # positions subsampled: im2col's grid
