"""``model: torchvision:resnet18`` and friends: torchvision's architectures by name.

Built with ``weights=None``, always: tuner never downloads. To start from pretrained weights,
save them once where the study can read them and give ``weights: path/to/state_dict.pt``
(:mod:`tuner.training.transfer` adapts the first conv to the data's channels and leaves a head of
another shape fresh). The classifier head is replaced to fit the dataset's classes (or one
output for regression) and the first convolution takes the data's channels. The model names
its blocks (the stem, then each stage) for ``freeze`` and ``backbone_lr_scale``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tuner.kinds import InputKind, Inputs
from tuner.models import Family, register

if TYPE_CHECKING:
    from torch import nn

PREFIX = "torchvision:"

# architecture -> summary; each runs on 28x28 (MNIST) and 32x32 (CIFAR) images and larger
ARCHITECTURES = {
    "resnet18": "ResNet-18 (11.2M parameters at 1000 classes)",
    "resnet34": "ResNet-34",
    "resnet50": "ResNet-50",
    "mobilenet_v2": "MobileNetV2",
    "mobilenet_v3_small": "MobileNetV3 small",
    "mobilenet_v3_large": "MobileNetV3 large",
    "efficientnet_b0": "EfficientNet-B0",
    "shufflenet_v2_x0_5": "ShuffleNetV2 x0.5",
    "shufflenet_v2_x1_0": "ShuffleNetV2 x1.0",
    "densenet121": "DenseNet-121",
}


def _builder(arch: str):  # noqa: ANN202 - a Family.build
    def build(p: Mapping[str, Any], inputs: Inputs, num_outputs: int) -> nn.Module:
        import torchvision

        model = torchvision.models.get_model(arch, weights=None)  # never a download
        _adapt(model, inputs.shape[0], num_outputs)
        return model

    return build


def _adapt(model: nn.Module, channels: int, num_outputs: int) -> None:
    """Replace the first conv for ``channels`` inputs and the last Linear for ``num_outputs``;
    name the blocks (``model.tuner_blocks``, ``model.tuner_head``) for freezing."""
    from torch import nn

    named = dict(model.named_modules())
    first = next(n for n, m in named.items() if isinstance(m, nn.Conv2d))
    conv = named[first]
    if conv.in_channels != channels:
        _replace(model, first, nn.Conv2d(
            channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
            conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode))
    head = [n for n, m in named.items() if isinstance(m, nn.Linear)][-1]
    _replace(model, head, nn.Linear(named[head].in_features, num_outputs))
    model.tuner_head = head
    model.tuner_blocks = _stages(model, head)
    model.channels_last = True  # convs all the way, flattened by torch.flatten: NHWC is safe


def _stages(model: nn.Module, head: str) -> tuple[tuple[str, ...], ...]:
    """The stem and the stages, in order: ``features.0 ..`` where the model keeps its layers
    in ``features``, else its top-level children; a norm joins the block before it."""
    from torch import nn

    root = "features." if isinstance(getattr(model, "features", None), nn.Sequential) else ""
    parent = model.features if root else model
    out: list[list[str]] = []
    for name, child in parent.named_children():
        full = root + name
        if full == head or head.startswith(f"{full}.") or not any(
                True for _ in child.parameters()):
            continue
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and out:
            out[-1].append(full)
        else:
            out.append([full])
    return tuple(tuple(b) for b in out)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


for _arch, _summary in ARCHITECTURES.items():
    register(Family(
        name=PREFIX + _arch,
        summary=f"torchvision {_summary}, untrained (weights: to start from a state_dict)",
        inputs=frozenset({InputKind.image}),
        knobs={},
        build=_builder(_arch),
    ))
