"""MobileNetV2 (Sandler et al., CVPR 2018, Table 2) written out with plain torch.nn, for
32x32 inputs: the stem's stride is 1 (the CIFAR adaptation), everything else as the paper's
table. A width multiplier scales the channels (rounded to multiples of 8, as the reference
implementation does). Its 17 depthwise 3x3 convolutions are the grouped layers of issue 24;
docs/recorder_overhead.py measures the recorder on it.
"""

from __future__ import annotations

import torch
from torch import nn

# (expansion t, output channels c, repeats n, first stride s): the paper's Table 2
CONFIG = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
          (6, 160, 3, 2), (6, 320, 1, 1))


def _channels(c: int, width: float) -> int:
    return max(8, int(c * width + 4) // 8 * 8)


class InvertedResidual(nn.Module):
    """1x1 expansion, 3x3 depthwise, 1x1 linear projection; a residual when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, t: int):
        super().__init__()
        hid = cin * t
        layers: list[nn.Module] = []
        if t != 1:
            layers += [nn.Conv2d(cin, hid, 1, bias=False), nn.BatchNorm2d(hid), nn.ReLU6()]
        layers += [nn.Conv2d(hid, hid, 3, stride, 1, groups=hid, bias=False),
                   nn.BatchNorm2d(hid), nn.ReLU6(),
                   nn.Conv2d(hid, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, width: float = 0.35, classes: int = 10):
        super().__init__()
        c = _channels(32, width)
        feats: list[nn.Module] = [nn.Conv2d(3, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c),
                                  nn.ReLU6()]
        for t, co, n, s in CONFIG:
            co = _channels(co, width)
            for i in range(n):
                feats.append(InvertedResidual(c, co, s if i == 0 else 1, t))
                c = co
        feats += [nn.Conv2d(c, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6()]
        self.features = nn.Sequential(*feats)
        self.classifier = nn.Linear(1280, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))
