"""SlimSplit training-side tools: architecture, model files, int8 quantization, ONNX graphs."""

from .arch import SlimNet, active_channels, layer_channels, load_arch  # noqa: F401
from .model_io import load_model, load_net, save_model  # noqa: F401

__version__ = "0.1.0"
