"""Training task adapters (LoRA + multi-vector projector) with the jina-v4 recipe: ``omnivec train``."""
from .trainer import TrainConfig, Trainer, TrainResult

__all__ = ["TrainConfig", "Trainer", "TrainResult"]
