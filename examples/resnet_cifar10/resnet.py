"""A small residual CNN for CIFAR-10, built from the trial's params.

tuner calls ``build(params, input_shape, num_outputs)`` once per trial and trains the model
with its own loop (optimizer, schedule, batch size, checkpoints: the study file's ``lr``,
``optimizer``, ``batch_size``... go there). Everything else in ``params`` is yours:

    stages        how many resolution stages (32x32, 16x16, 8x8, ...)
    channels_i    filters of stage i (one value per stage: ``per_layer: stages``)
    blocks        residual blocks per stage
    dropout       before the classifier
"""

from __future__ import annotations

from torch import Tensor, nn


class Residual(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus a shortcut (1x1 conv when the shape changes), ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        return (self.body(x) + self.shortcut(x)).relu()


def build(params: dict, input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    """params -> a ResNet for images shaped ``input_shape`` (C, H, W), ``num_outputs`` logits."""
    stages = int(params.get("stages", 3))
    widths = [int(params.get(f"channels_{i}", 32 * 2**i)) for i in range(stages)]
    blocks = int(params.get("blocks", 1))
    layers: list[nn.Module] = [
        nn.Conv2d(input_shape[0], widths[0], 3, padding=1, bias=False),
        nn.BatchNorm2d(widths[0]),
        nn.ReLU(inplace=True),
    ]
    c = widths[0]
    for i, width in enumerate(widths):
        for b in range(blocks):
            # every stage after the first halves the resolution in its first block
            layers.append(Residual(c, width, stride=2 if i > 0 and b == 0 else 1))
            c = width
    layers += [
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(float(params.get("dropout", 0.0))),
        nn.Linear(c, num_outputs),
    ]
    return nn.Sequential(*layers)
