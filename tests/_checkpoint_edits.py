"""Tampering with a checkpoint's safetensors file, for the strict-loading tests of every family."""
from __future__ import annotations

from pathlib import Path

import torch


def tamper(file: Path, edit: str, *, drop_suffix: str, extra_name: str) -> str:
    """``edit="drop"``: delete the weight whose key ends with ``drop_suffix``; ``"extra"``: add an
    unused ``extra_name``. Returns the key dropped or added."""
    from safetensors.torch import load_file, save_file

    sd = load_file(str(file))
    if edit == "drop":
        name = next(k for k in sd if k.endswith(drop_suffix))
        del sd[name]
    elif edit == "extra":
        name = extra_name
        sd[name] = torch.zeros(2, 2)
    else:
        raise ValueError(f"edit must be 'drop' or 'extra', got {edit!r}")
    save_file(sd, str(file), metadata={"format": "pt"})
    return name
