"""The loader benchmark runs on a tiny tree, and its SegNet FLOP count matches a hand count."""
from __future__ import annotations

import pytest

from okd.data.bench import main, segnet_train_flops


def hand_segnet_train_flops(height: int, width: int, head_channels: int = 13 + 1 + 3) -> int:
    """Convolution multiply-adds of SegNet (width 1.0) per pixel, counted by hand, x2 FLOPs.

    3x3 convs: encoder 3-64-64 | 64-128-128 | 128-256-256-256 | 256-512-512-512 | 512-512-512-512
    at 1, 1/4, 1/16, 1/64, 1/256 of the pixels; decoder 512-512-512-512 | 512-256-256-256 |
    256-128-128-128 | 128-64-64 | 64-64-64 at 1/256 .. 1; three heads 64-64 (3x3) + 64-C (1x1).
    Backward costs twice the forward, less the input gradient of the first conv.
    """
    def pairs(chain):
        return sum(a * b for a, b in zip(chain[:-1], chain[1:]))

    encoder = [(1, [3, 64, 64]), (4, [64, 128, 128]), (16, [128, 256, 256, 256]),
               (64, [256, 512, 512, 512]), (256, [512, 512, 512, 512])]
    decoder = [(256, [512, 512, 512, 512]), (64, [512, 256, 256, 256]), (16, [256, 128, 128, 128]),
               (4, [128, 64, 64]), (1, [64, 64, 64])]
    pixels = height * width
    macs = sum(9 * pixels // share * pairs(chain) for share, chain in encoder + decoder)
    macs += 3 * 9 * pixels * 64 * 64 + pixels * 64 * head_channels
    first_input_grad = 9 * pixels * 3 * 64
    return 2 * (3 * macs - first_input_grad)


@pytest.mark.parametrize("size", [(64, 64), (288, 384)])
def test_segnet_flops_match_the_hand_count(size):
    assert segnet_train_flops(*size) == hand_segnet_train_flops(*size)


def test_bench_cli_on_a_tiny_tree(capsys):
    result = main(["--n", "4", "--size", "32x64", "--batch-size", "2", "--workers", "0", "--epochs", "1",
                   "--augment"])
    assert result["loader"][0] > 0 and result["samples"] == 4 and result["size"] == (32, 64)
    assert result["gpu"][200.0] == pytest.approx(200e12 / result["segnet_flops"])
    out = capsys.readouterr().out
    assert "num_workers=0" in out and "GFLOP per sample" in out
