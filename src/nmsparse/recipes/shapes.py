"""Weight shapes of well-known networks, built in code (no download): for demos, benchmarks and tests."""

from __future__ import annotations

__all__ = ["resnet50_weight_shapes"]


def resnet50_weight_shapes() -> list[tuple[str, tuple[int, ...]]]:
    """``(name, shape)`` of every conv and fc weight of torchvision's ResNet-50 (25.5M weights).

    Example:
        >>> shapes = resnet50_weight_shapes()
        >>> len(shapes), shapes[0]
        (54, ('conv1.weight', (64, 3, 7, 7)))
    """
    shapes: list[tuple[str, tuple[int, ...]]] = [("conv1.weight", (64, 3, 7, 7))]
    in_ch = 64
    for stage, (blocks, width) in enumerate(((3, 64), (4, 128), (6, 256), (3, 512)), start=1):
        out_ch = width * 4
        for block in range(blocks):
            prefix = f"layer{stage}.{block}"
            shapes.append((f"{prefix}.conv1.weight", (width, in_ch, 1, 1)))
            shapes.append((f"{prefix}.conv2.weight", (width, width, 3, 3)))
            shapes.append((f"{prefix}.conv3.weight", (out_ch, width, 1, 1)))
            if block == 0:
                shapes.append((f"{prefix}.downsample.0.weight", (out_ch, in_ch, 1, 1)))
            in_ch = out_ch
    shapes.append(("fc.weight", (1000, 2048)))
    return shapes
