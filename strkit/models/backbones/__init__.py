"""Stage 2: backbones (B×C×H×W -> B×C'×H'×W'). Importing this package registers them."""

from strkit.models.backbones import itervm, mobilenetv2, resnet, searched, vgg  # noqa: F401
