"""The hand-written transposed convolutions agree with each other and with nn.ConvTranspose2d."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cvkit.ops.transposed import (
    convolution_matrix,
    trans_conv_loops,
    trans_conv_matmul,
    transposed_output_size,
)

CASES = [
    # (in_channels, out_channels, kernel, stride, padding, height, width)
    (1, 1, 2, 1, 0, 2, 2),
    (2, 3, 3, 1, 1, 4, 5),
    (3, 2, 4, 2, 1, 3, 4),
    (2, 2, 3, 2, 0, 5, 3),
    (1, 4, 16, 8, 4, 2, 3),
]


def test_textbook_example_by_hand():
    # 2x2 input, 2x2 kernel, stride 1: each input value stamps the kernel at its position.
    x = torch.tensor([[0.0, 1.0], [2.0, 3.0]]).view(1, 1, 2, 2)
    kernel = torch.tensor([[0.0, 1.0], [2.0, 3.0]]).view(1, 1, 2, 2)
    expected = torch.tensor([[0.0, 0.0, 1.0], [0.0, 4.0, 6.0], [4.0, 12.0, 9.0]])
    assert torch.equal(trans_conv_loops(x, kernel)[0, 0], expected)
    assert torch.equal(trans_conv_matmul(x, kernel)[0, 0], expected)


@pytest.mark.parametrize(("c_in", "c_out", "k", "s", "p", "h", "w"), CASES)
def test_references_match_conv_transpose2d(c_in, c_out, k, s, p, h, w):
    torch.manual_seed(0)
    layer = nn.ConvTranspose2d(c_in, c_out, k, stride=s, padding=p, bias=True).double()
    x = torch.randn(2, c_in, h, w, dtype=torch.float64)
    expected = layer(x)
    loops = trans_conv_loops(x, layer.weight, layer.bias, stride=s, padding=p)
    matmul = trans_conv_matmul(x, layer.weight, layer.bias, stride=s, padding=p)
    torch.testing.assert_close(loops, expected.detach())
    torch.testing.assert_close(matmul, expected.detach())
    assert expected.shape[2:] == (
        transposed_output_size(h, k, s, p),
        transposed_output_size(w, k, s, p),
    )


def test_convolution_matrix_is_conv2d():
    torch.manual_seed(1)
    weight = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    z = torch.randn(4, 2, 7, 6, dtype=torch.float64)
    matrix = convolution_matrix(weight, (7, 6), stride=2, padding=1)
    expected = F.conv2d(z, weight, stride=2, padding=1).flatten(1)
    torch.testing.assert_close(z.flatten(1) @ matrix.T, expected)


def test_transpose_is_the_adjoint_of_the_convolution():
    # <conv(z), y> == <z, conv_transpose(y)> for every z and y: the defining property.
    torch.manual_seed(2)
    weight = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    z = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    y = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    lhs = (F.conv2d(z, weight, stride=2, padding=1) * y).sum()
    rhs = (z * trans_conv_loops(y, weight, stride=2, padding=1)).sum()
    torch.testing.assert_close(lhs, rhs)


@pytest.mark.parametrize("factor", [2, 4, 8, 16, 32])
@pytest.mark.parametrize("size", [1, 5, 8])
def test_size_rule_gives_exact_upsampling_when_k_is_2p_plus_s(factor, size):
    kernel, padding = 2 * factor, factor // 2
    assert transposed_output_size(size, kernel, factor, padding) == factor * size
    layer = nn.ConvTranspose2d(1, 1, kernel, stride=factor, padding=padding)
    assert layer(torch.zeros(1, 1, size, size)).shape[-1] == factor * size


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="channels"):
        trans_conv_loops(torch.zeros(1, 2, 3, 3), torch.zeros(3, 1, 2, 2))
    with pytest.raises(ValueError, match="no output"):
        trans_conv_matmul(torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 2, 2), padding=1)
