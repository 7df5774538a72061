"""capl: class-aware pruning of convolutional networks on PyTorch Lightning."""

__version__ = "0.1.0"
