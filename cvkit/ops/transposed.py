"""Transposed convolution written out by hand, as a reference for ``nn.ConvTranspose2d``.

Two independent formulations of the same operator, both slow and meant only for tests and
teaching:

* :func:`trans_conv_loops` scatters every input element times the kernel into the output
  (the "broadcast and add" view), with explicit Python loops over input positions.
* :func:`trans_conv_matmul` builds the matrix ``M`` of the ordinary convolution that maps the
  output size back to the input size and multiplies by ``M.T`` (the "transpose of a
  convolution" view that gives the operator its name).

Both use the ``nn.ConvTranspose2d`` weight layout ``[C_in, C_out, kH, kW]`` and follow the size
rule of :func:`transposed_output_size`: ``n' = s·n + k − 2p − s``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def transposed_output_size(size: int, kernel_size: int, stride: int = 1, padding: int = 0) -> int:
    """Spatial size produced by a transposed convolution along one axis.

    ``n' = s·n + k − 2p − s``; with ``k = 2p + s`` this is exactly ``s·n`` (upsampling by ``s``).

    Args:
        size: input size ``n`` along the axis.
        kernel_size: kernel size ``k``.
        stride: stride ``s``.
        padding: padding ``p`` removed from each side of the full output.
    """
    return stride * size + kernel_size - 2 * padding - stride


def _check(x: Tensor, weight: Tensor, stride: int, padding: int) -> None:
    if x.dim() != 4 or weight.dim() != 4:
        raise ValueError(
            f"expected x [B, C_in, H, W] and weight [C_in, C_out, kH, kW], "
            f"got {tuple(x.shape)} and {tuple(weight.shape)}"
        )
    if x.shape[1] != weight.shape[0]:
        raise ValueError(f"x has {x.shape[1]} channels but weight expects {weight.shape[0]}")
    if stride < 1 or padding < 0:
        raise ValueError(f"stride must be >= 1 and padding >= 0, got {stride} and {padding}")
    for axis in (2, 3):
        if transposed_output_size(x.shape[axis], weight.shape[axis], stride, padding) < 1:
            raise ValueError(
                f"padding {padding} leaves no output for input size {x.shape[axis]} and "
                f"kernel {weight.shape[axis]}"
            )


def trans_conv_loops(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, stride: int = 1, padding: int = 0
) -> Tensor:
    """Transposed convolution by scattering: each input pixel adds ``x[i, j] · K`` to a window.

    Input pixel ``(i, j)`` writes the kernel, scaled by its value, into the full output at
    ``[i·s : i·s + kH, j·s : j·s + kW]``; ``padding`` then crops ``p`` rows and columns from
    every side.

    Args:
        x: ``Tensor[B, C_in, H, W]``.
        weight: ``Tensor[C_in, C_out, kH, kW]`` (the ``nn.ConvTranspose2d`` layout).
        bias: optional ``Tensor[C_out]``.
        stride: stride ``s``.
        padding: padding ``p``.

    Returns:
        ``Tensor[B, C_out, H', W']`` with ``H' = s·H + kH − 2p − s`` (same for ``W'``).
    """
    _check(x, weight, stride, padding)
    batch, _, height, width = x.shape
    _, out_channels, kernel_h, kernel_w = weight.shape
    full = x.new_zeros(
        batch,
        out_channels,
        (height - 1) * stride + kernel_h,
        (width - 1) * stride + kernel_w,
    )
    for i in range(height):
        for j in range(width):
            # [B, C_in] x [C_in, C_out, kH, kW] -> [B, C_out, kH, kW]
            window = torch.einsum("bc,cokl->bokl", x[:, :, i, j], weight)
            full[:, :, i * stride : i * stride + kernel_h, j * stride : j * stride + kernel_w] += (
                window
            )
    out = full[:, :, padding : full.shape[2] - padding, padding : full.shape[3] - padding]
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


def convolution_matrix(
    weight: Tensor, input_size: tuple[int, int], stride: int = 1, padding: int = 0
) -> Tensor:
    """The matrix of an ordinary (cross-correlation) convolution acting on flattened images.

    ``conv2d(z, weight, stride, padding).flatten(1) == z.flatten(1) @ M.T`` for ``z`` of shape
    ``[B, C_in, H, W]``, where ``weight`` is ``[C_out, C_in, kH, kW]`` (the ``nn.Conv2d``
    layout). The transposed convolution with the same weight tensor is multiplication by ``M.T``.

    Args:
        weight: ``Tensor[C_out, C_in, kH, kW]``.
        input_size: ``(H, W)`` of the convolution's input.
        stride: stride ``s``.
        padding: zero padding ``p`` on every side.

    Returns:
        ``Tensor[C_out·H_o·W_o, C_in·H·W]`` with ``H_o = (H + 2p − kH) // s + 1``.
    """
    out_channels, in_channels, kernel_h, kernel_w = weight.shape
    height, width = input_size
    out_h = (height + 2 * padding - kernel_h) // stride + 1
    out_w = (width + 2 * padding - kernel_w) // stride + 1
    matrix = weight.new_zeros(out_channels, out_h, out_w, in_channels, height, width)
    for oy in range(out_h):
        for ox in range(out_w):
            for ky in range(kernel_h):
                for kx in range(kernel_w):
                    iy = oy * stride - padding + ky
                    ix = ox * stride - padding + kx
                    if 0 <= iy < height and 0 <= ix < width:
                        matrix[:, oy, ox, :, iy, ix] = weight[:, :, ky, kx]
    return matrix.reshape(out_channels * out_h * out_w, in_channels * height * width)


def trans_conv_matmul(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, stride: int = 1, padding: int = 0
) -> Tensor:
    """Transposed convolution as multiplication by the transpose of a convolution matrix.

    The convolution that maps ``[B, C_out, H', W']`` back to ``[B, C_in, H, W]`` with the same
    kernel, stride and padding has matrix ``M`` (:func:`convolution_matrix`); this returns
    ``M.T`` applied to ``x``.

    Args:
        x: ``Tensor[B, C_in, H, W]``.
        weight: ``Tensor[C_in, C_out, kH, kW]`` (the ``nn.ConvTranspose2d`` layout, which is the
            ``nn.Conv2d`` layout of the convolution being transposed).
        bias: optional ``Tensor[C_out]``.
        stride: stride ``s``.
        padding: padding ``p``.

    Returns:
        ``Tensor[B, C_out, H', W']`` with ``H' = s·H + kH − 2p − s``.
    """
    _check(x, weight, stride, padding)
    batch, _, height, width = x.shape
    out_h = transposed_output_size(height, weight.shape[2], stride, padding)
    out_w = transposed_output_size(width, weight.shape[3], stride, padding)
    matrix = convolution_matrix(weight, (out_h, out_w), stride, padding)
    out = (x.reshape(batch, -1) @ matrix).reshape(batch, weight.shape[1], out_h, out_w)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out
