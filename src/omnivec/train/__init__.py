"""Training task adapters (LoRA + multi-vector projector) with the jina-v4 recipe: ``omnivec train``."""
from .projector import ProjectorConfig, ProjectorResult, ProjectorTrainer
from .trainer import TrainConfig, Trainer, TrainResult

__all__ = ["ProjectorConfig", "ProjectorResult", "ProjectorTrainer", "TrainConfig", "Trainer", "TrainResult"]
