"""Jina dialect: ``EmbeddingsV4Request`` in, Jina ``EmbeddingResponse`` out.

Text / ``{text}`` / ``{image}`` / ``{pdf}`` inputs, ``embedding_type`` (one or a list),
multi-vectors (``embeddings`` items, optional ``tokenized_input``), late chunking, and PDF
pages as items carrying ``input_index``/``page``.
"""
from __future__ import annotations

from typing import Any

from ...embedder import Embedder
from ...inputs import PDF, Image
from .. import protocol
from ..errors import bad
from ..pipeline import Dialect, EmbedSpec, validate_model


def validate(body: Any) -> protocol.JinaRequest:
    return validate_model(protocol.JinaRequest, body)


def to_spec(req: protocol.JinaRequest, emb: Embedder) -> EmbedSpec:
    raw = req.input if isinstance(req.input, list) else [req.input]
    inputs: list[Any] = []
    paths: list[str] = []
    for i, x in enumerate(raw):
        if isinstance(x, str):
            inputs.append(x), paths.append(f"input[{i}]")
        elif isinstance(x, protocol.TextDoc):
            inputs.append(x.text), paths.append(f"input[{i}].text")
        elif isinstance(x, protocol.ImageDoc):
            inputs.append(Image(x.image)), paths.append(f"input[{i}].image")
        else:
            inputs.append(PDF(x.pdf)), paths.append(f"input[{i}].pdf")
    et = req.embedding_type or "float"
    spec = EmbedSpec(inputs=inputs, paths=paths, task=req.task or "text-matching", dimensions=req.dimensions,
                     normalize=req.normalized is not False, multivector=bool(req.return_multivector),
                     truncate=bool(req.truncate), late_chunking=bool(req.late_chunking),
                     tokenized=bool(req.return_tokenized_input),
                     encodings=list(dict.fromkeys(et)) if isinstance(et, list) else [et],
                     encoding_list=isinstance(et, list))
    if spec.multivector and spec.dimensions is not None:
        raise bad("dimensions cannot be used with return_multivector (multi-vectors keep "
                  f"{emb.multivector_dim} dimensions)", "dimensions")
    if spec.tokenized and not spec.multivector:
        raise bad("return_tokenized_input requires return_multivector=true", "return_tokenized_input")
    if spec.late_chunking:
        if spec.multivector:
            raise bad("late_chunking cannot be combined with return_multivector", "late_chunking")
        not_text = [p for p, x in zip(paths, inputs) if not isinstance(x, str)]
        if not_text:
            raise bad("late_chunking works on text inputs only", not_text[0])
    if not spec.encodings:
        raise bad("embedding_type list is empty", "embedding_type")
    return spec


def response_body(spec: EmbedSpec, payloads: list[Any], tokens: list[int], origins: list[int],
                  model_name: str) -> dict:
    pdf_pages: dict[int, int] = {}
    data = []
    for i, (payload, origin) in enumerate(zip(payloads, origins)):
        if spec.multivector:
            item: dict[str, Any] = {"object": "embeddings", "index": i, "embeddings": payload}
            if spec.tokenized and spec.token_strings is not None:
                item["tokenized_input"] = spec.token_strings[i]
        else:
            item = {"object": "embedding", "index": i, "embedding": payload}
        if isinstance(spec.inputs[origin], PDF):
            item["input_index"] = origin
            item["page"] = pdf_pages.get(origin, 0)
            pdf_pages[origin] = item["page"] + 1
        data.append(item)
    return {"object": "list", "model": model_name, "data": data, "usage": protocol.usage(int(sum(tokens)))}


DIALECT = Dialect("jina", validate, to_spec, response_body)
