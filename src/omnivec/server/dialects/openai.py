"""OpenAI dialect: ``CreateEmbeddingRequest`` in (``task``/``truncate`` as extensions), its response out.

String or token-id inputs (ids are decoded with the served model's own vocabulary),
``encoding_format`` ``float`` or ``base64``, dense vectors only, always normalised.
"""
from __future__ import annotations

from typing import Any

from ...embedder import Embedder
from .. import protocol
from ..errors import bad
from ..pipeline import Dialect, EmbedSpec, validate_model


def validate(body: Any) -> protocol.OpenAIRequest:
    """Refuse Jina-only parts first (their error names them), then strict validation."""
    if isinstance(body, dict):
        problem = protocol.mixed_dialect_problem(body)
        if problem:
            raise bad(problem, "input" if "input objects" in problem else problem.split(",")[0].split(" ")[0])
    return validate_model(protocol.OpenAIRequest, body)


def to_spec(req: protocol.OpenAIRequest, emb: Embedder) -> EmbedSpec:
    raw: list[Any] = req.input if isinstance(req.input, list) else [req.input]
    if raw and isinstance(raw[0], int):
        raw = [raw]  # one token-id list
    inputs = [decode_ids(x, emb, f"input[{i}]") if isinstance(x, list) else x for i, x in enumerate(raw)]
    return EmbedSpec(inputs=inputs, paths=[f"input[{i}]" for i in range(len(inputs))],
                     task=req.task or "text-matching", dimensions=req.dimensions, normalize=True,
                     multivector=False, truncate=bool(req.truncate), late_chunking=False, tokenized=False,
                     encodings=[req.encoding_format], encoding_list=False)


def decode_ids(ids: list[int], emb: Embedder, path: str) -> str:
    """Token ids are read in the served model's own vocabulary and decoded back to text."""
    if not emb.model.capabilities.token_ids:
        raise bad("token-id input is not supported by this model", path)
    size = emb.model.processor.vocab_size
    out_of_range = next((t for t in ids if not 0 <= t < size), None)
    if out_of_range is not None:
        raise bad(f"token id {out_of_range} is out of range for this model's vocabulary (0..{size - 1})", path)
    if not ids:
        raise bad("empty token-id list", path)
    return emb.model.processor.decode(ids)


def response_body(spec: EmbedSpec, payloads: list[Any], tokens: list[int], origins: list[int],
                  model_name: str) -> dict:
    data = [{"object": "embedding", "index": i, "embedding": payload}
            for i, (payload, _) in enumerate(zip(payloads, origins))]
    return {"object": "list", "model": model_name, "data": data, "usage": protocol.usage(int(sum(tokens)))}


DIALECT = Dialect("openai", validate, to_spec, response_body)
