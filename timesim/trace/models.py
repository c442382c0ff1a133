"""Layer matrices of the paper's networks (shared/workloads.md), with conv geometry."""

from __future__ import annotations

from .format import LayerInfo


def conv(name: str, cin: int, cout: int, k: int, hw_in: int, stride: int = 1,
         padding: int | None = None) -> LayerInfo:
    pad = k // 2 if padding is None else padding
    hw_out = (hw_in + 2 * pad - k) // stride + 1
    return LayerInfo(name=name, kind="conv2d", rows=cin * k * k, cols=cout, kernel=(k, k),
                     in_channels=cin, out_channels=cout, input_hw=(hw_in, hw_in),
                     output_hw=(hw_out, hw_out), stride=(stride, stride), padding=(pad, pad))


def linear(name: str, fin: int, fout: int) -> LayerInfo:
    return LayerInfo(name=name, kind="linear", rows=fin, cols=fout)


def resnet20() -> list[LayerInfo]:
    """ResNet-20 for CIFAR-10 (He et al. 2016, option-A shortcuts): 20 matrices."""
    layers = [conv("conv1", 3, 16, 3, 32)]
    cin, hw = 16, 32
    for stage, cout in enumerate((16, 32, 64), start=1):
        for block in range(3):
            stride = 2 if stage > 1 and block == 0 else 1
            layers.append(conv(f"layer{stage}.{block}.conv1", cin, cout, 3, hw, stride))
            hw = layers[-1].output_hw[0]
            layers.append(conv(f"layer{stage}.{block}.conv2", cout, cout, 3, hw))
            cin = cout
    layers.append(linear("fc", 64, 10))
    return layers


_VGG16 = [(1, 3, 64), (1, 64, 64), (2, 64, 128), (2, 128, 128), (3, 128, 256), (3, 256, 256),
          (3, 256, 256), (4, 256, 512), (4, 512, 512), (4, 512, 512), (5, 512, 512),
          (5, 512, 512), (5, 512, 512)]


def vgg16() -> list[LayerInfo]:
    """VGG-16, CIFAR-10 variant: 13 conv + 3 FC (fc.0, fc.1 512x512, fc.2 512x10)."""
    layers, index = [], {}
    for stage, cin, cout in _VGG16:
        index[stage] = index.get(stage, 0) + 1
        hw = 32 >> (stage - 1)
        layers.append(conv(f"conv{stage}_{index[stage]}", cin, cout, 3, hw))
    layers += [linear("fc.0", 512, 512), linear("fc.1", 512, 512), linear("fc.2", 512, 10)]
    return layers


def vgg11() -> list[LayerInfo]:
    """VGG-11, CIFAR-10 variant with the 1024x10 last FC of the paper's Fig. 2."""
    spec = [(3, 64, 32), (64, 128, 16), (128, 256, 8), (256, 256, 8), (256, 512, 4),
            (512, 512, 4), (512, 512, 2), (512, 512, 2)]
    layers = [conv(f"conv{i + 1}", cin, cout, 3, hw) for i, (cin, cout, hw) in enumerate(spec)]
    layers += [linear("fc.0", 512, 1024), linear("fc.1", 1024, 1024), linear("fc.2", 1024, 10)]
    return layers


def resnet50() -> list[LayerInfo]:
    """ResNet-50 for ImageNet: bottlenecks [3, 4, 6, 3], 1x1 projections, stride on the 3x3."""
    layers = [conv("conv1", 3, 64, 7, 224, stride=2, padding=3)]
    cin, hw = 64, 56
    for stage, (blocks, width) in enumerate(((3, 64), (4, 128), (6, 256), (3, 512)), start=1):
        cout = width * 4
        for block in range(blocks):
            stride = 2 if stage > 1 and block == 0 else 1
            p = f"layer{stage}.{block}"
            layers.append(conv(f"{p}.conv1", cin, width, 1, hw))
            layers.append(conv(f"{p}.conv2", width, width, 3, hw, stride))
            hw_out = layers[-1].output_hw[0]
            layers.append(conv(f"{p}.conv3", width, cout, 1, hw_out))
            if block == 0:
                layers.append(conv(f"{p}.downsample", cin, cout, 1, hw, stride, padding=0))
            cin, hw = cout, hw_out
    layers.append(linear("fc", 2048, 1000))
    return layers


def mlp() -> list[LayerInfo]:
    """MLP 64-256-256-10 for scikit-learn's 8x8 digits."""
    return [linear("fc1", 64, 256), linear("fc2", 256, 256), linear("fc3", 256, 10)]


def mlp_small() -> list[LayerInfo]:
    """MLP 64-128-16-10: small enough for quick tests, with one row-wise (128-row) layer."""
    return [linear("fc1", 64, 128), linear("fc2", 128, 16), linear("fc3", 16, 10)]


def hammer() -> list[LayerInfo]:
    """One 144x16 layer (the shape of ResNet-20's stage-1 convs) for the wear-out attacks."""
    return [linear("target", 144, 16)]


# name -> (layers, default iterations (the paper's, Table 1 / Fig. 2), dataset)
MODELS = {
    "resnet20": (resnet20, 64124, "cifar10"),
    "vgg16": (vgg16, 78200, "cifar10"),
    "vgg11": (vgg11, 64000, "cifar10"),
    "resnet50": (resnet50, 450450, "imagenet"),
    "mlp": (mlp, 64000, "digits"),
    "mlp-small": (mlp_small, 1000, "digits"),
    "hammer": (hammer, 64000, "adversarial"),
    "hammer-chase": (hammer, 64000, "adversarial"),
}
