"""Wire formats of ``POST /v1/embeddings``: the Jina and OpenAI dialects on one route.

Dialect rule (documented in the README, "HTTP API"):

* **OpenAI** when the body has an OpenAI-only field (``encoding_format`` or ``user``) or when
  ``input`` is token ids (a list of integers or a list of such lists). The official SDKs always
  send ``encoding_format``, so they are always recognised. ``task`` and ``truncate`` are
  accepted here too as extensions (``extra_body`` in the SDK).
* **Jina** otherwise: plain JSON with string / ``{text}`` / ``{image}`` / ``{pdf}`` inputs and
  the Jina fields. A string-only body without ``encoding_format`` is Jina; its success
  response is byte-compatible with OpenAI's float response, only errors differ in shape.

Errors raised before the dialect is known (authentication, content type, body size, malformed JSON,
overload) carry both envelopes at once: ``{detail, code, request_id, error: {...}}``.

Request models are strict (no silent "1" -> 1 coercion) and closed (``extra="forbid"``: a typo
such as ``dimension`` is a 422 naming it, not silently ignored), so mistakes are 422s naming the
field path instead of surprises. The Jina model accepts every field of Jina's
``EmbeddingsV4Request`` (plus ``normalized``), the OpenAI one every field of OpenAI's
``CreateEmbeddingRequest`` (``model``, ``input``, ``encoding_format``, ``dimensions``, ``user``)
plus the ``task``/``truncate`` extensions. These models are also the served OpenAPI schema
(``openapi.py``).
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from annotated_types import Gt, Le
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, RootModel, Strict, StrictBool, StrictStr

MAX_INPUTS = 2048
EMBEDDING_TYPES = ("float", "base64", "binary", "ubinary")
EmbeddingType = Literal["float", "base64", "binary", "ubinary"]
TaskName = Literal["text-matching", "retrieval.query", "retrieval.passage", "code.query", "code.passage",
                   "separation", "classification"]   # the last two: jina-embeddings-v3 models
JINA_ONLY = ("task", "embedding_type", "late_chunking", "return_multivector",
             "return_tokenized_input", "truncate", "normalized")
OPENAI_ONLY = ("encoding_format", "user")
# Jina fields the OpenAI dialect also accepts (so ``extra_body={"task": ...}`` works).
OPENAI_EXTENSIONS = ("task", "truncate")


def _is_int_like(v: Any) -> bool:
    """An integer, or a float with an integral value (JSON Schema's ``integer`` accepts 10.0)."""
    return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer())


def _whole(v: Any) -> Any:
    return int(v) if isinstance(v, float) and v.is_integer() else v


# Strict integers (no "1" -> 1, no true -> 1), but a whole-valued JSON number such as 10.0 is
# the integer it spells: the served schema says ``integer``, which JSON Schema defines that way.
WholeInt = Annotated[int, Strict(), BeforeValidator(_whole)]
TokenIds = Annotated[list[WholeInt], Field(min_length=1)]
Dimensions = Annotated[int, Strict(), Gt(0), Le(2048), BeforeValidator(_whole)]   # 2048: jina-v4's size


class TextDoc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: StrictStr


class ImageDoc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: StrictStr


class PDFDoc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pdf: StrictStr


JinaItem = Union[StrictStr, TextDoc, ImageDoc, PDFDoc]


class JinaRequest(BaseModel):
    """Jina ``EmbeddingsV4Request`` (plus ``normalized``; PDFs are also accepted inside lists)."""

    model_config = ConfigDict(extra="forbid")
    model: StrictStr
    input: Union[JinaItem, Annotated[list[JinaItem], Field(min_length=1)]]
    task: Optional[TaskName] = "text-matching"
    dimensions: Optional[Dimensions] = None
    embedding_type: Optional[Union[EmbeddingType, list[EmbeddingType]]] = None
    truncate: Optional[StrictBool] = False
    late_chunking: Optional[StrictBool] = False
    return_multivector: Optional[StrictBool] = False
    return_tokenized_input: Optional[StrictBool] = False
    normalized: Optional[StrictBool] = True


class OpenAIRequest(BaseModel):
    """OpenAI ``CreateEmbeddingRequest`` with ``task``/``truncate`` as extensions."""

    model_config = ConfigDict(extra="forbid")
    model: StrictStr
    input: Union[StrictStr, Annotated[list[StrictStr], Field(min_length=1)], TokenIds,
                 Annotated[list[TokenIds], Field(min_length=1)]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Optional[Dimensions] = None
    user: Optional[StrictStr] = None
    task: Optional[TaskName] = "text-matching"
    truncate: Optional[StrictBool] = False


def _is_token_ids(value: Any) -> bool:
    """A list of integers, or a list of lists of integers (empty inner lists included: the
    OpenAI model then names them, instead of a confusing Jina "not a string")."""
    if not isinstance(value, list) or not value:
        return False
    if all(_is_int_like(v) for v in value):
        return True
    return all(isinstance(v, list) and all(_is_int_like(t) for t in v) for v in value)


def detect_dialect(body: Any) -> Literal["jina", "openai"]:
    """Apply the dialect rule of the module docstring to a parsed JSON body."""
    if not isinstance(body, dict):
        return "jina"
    if any(k in body for k in OPENAI_ONLY) or _is_token_ids(body.get("input")):
        return "openai"
    return "jina"


_TYPE_TAGS = {"str", "int", "bool", "float", "list", "dict", "none"}


def mixed_dialect_problem(body: dict) -> str | None:
    """Why an OpenAI-dialect body carries Jina-only parts, or None when it is clean."""
    extra = [k for k in JINA_ONLY if k in body and k not in OPENAI_EXTENSIONS]
    items = body.get("input") if isinstance(body.get("input"), list) else [body.get("input")]
    if any(isinstance(x, dict) for x in items):
        extra.append("input objects ({text}/{image}/{pdf})")
    if not extra:
        return None
    return (f"{', '.join(extra)} belong to the Jina dialect, but encoding_format/user/token ids make "
            "this an OpenAI-dialect request; drop one or the other")


def field_path(loc: tuple[Any, ...]) -> str:
    """``("input", 3, "ImageDoc", "image")`` -> ``input[3].image`` (drops pydantic's union tags)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and (part[:1].isupper() or "[" in part or part in _TYPE_TAGS
                                        or part.startswith("function-")):
            continue  # union member tags such as "ImageDoc", "str" or "list[...]"
        else:
            out += ("." if out else "") + str(part)
    return out or "body"


# ------------------------------------------------------------------ responses

def usage(tokens: int) -> dict[str, int]:
    return {"prompt_tokens": tokens, "total_tokens": tokens}


# One vector in a wire encoding: floats, base64 of float32, packed bits (binary/ubinary), or
# ``{encoding: value}`` when Jina's ``embedding_type`` is a list.
Vector = Union[list[float], StrictStr, dict[str, Any]]
Vectors = Union[list[list[float]], list[StrictStr], dict[str, Any]]


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingItem(BaseModel):
    """One item of ``data``: ``embedding`` (dense) or ``embeddings`` (Jina multi-vector, one
    vector a token); PDF pages carry their ``input_index`` and ``page``."""

    object: Literal["embedding", "embeddings"]
    index: int
    embedding: Optional[Vector] = None
    embeddings: Optional[Vectors] = None
    tokenized_input: Optional[list[str]] = None
    input_index: Optional[int] = None
    page: Optional[int] = None


class EmbeddingResponse(BaseModel):
    """Both dialects' success body (OpenAI's ``CreateEmbeddingResponse`` shape)."""

    object: Literal["list"]
    model: str
    data: list[EmbeddingItem]
    usage: Usage


class ModelEntry(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    name: str
    input_modalities: list[str]
    output_modalities: list[str]
    context_length: Optional[int] = None
    max_output_length: Optional[int] = None
    # omnivec's extension: the ``task`` values this model accepts, each with the adapter it runs
    tasks: Optional[dict[str, str]] = None
    # omnivec's extension: the compute precision it runs (fp32 | int8 | bf16 | fp16, see docs/PRECISION.md)
    precision: Optional[str] = None


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelEntry]


class Status(BaseModel):
    """``/health`` and ``/ready``: ``ok``/``ready``, or ``loading``/``error`` (503) with ``detail``."""

    status: str
    model: Optional[str] = None
    detail: Optional[str] = None


class FieldError(BaseModel):
    field: str
    message: str
    type: str


class JinaError(BaseModel):
    """Jina's error body (``request_id`` and ``errors`` are omnivec's additions)."""

    detail: str
    code: str
    request_id: str
    errors: Optional[list[FieldError]] = None


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class OpenAIError(BaseModel):
    """OpenAI's error body."""

    error: OpenAIErrorDetail


class ErrorEnvelope(RootModel[Union[JinaError, OpenAIError]]):
    """The dialect's error body; before the dialect is known, both merged in one object."""


def jina_error(detail: str, code: str, request_id: str, errors: list[dict] | None = None) -> dict:
    out: dict[str, Any] = {"detail": detail, "code": code, "request_id": request_id}
    if errors is not None:
        out["errors"] = errors
    return out


def openai_error(message: str, type_: str, param: str | None, code: str | None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def model_list(ids: list[str], owner: str, created: int, info: dict[str, Any]) -> dict:
    """OpenAI's ``/v1/models`` list, with a few of Jina's ``ModelInfo`` fields per entry."""
    modalities = ["text", "image"]
    return {"object": "list", "data": [
        {"id": i, "object": "model", "created": created, "owned_by": owner,
         "name": info.get("model", i), "input_modalities": modalities,
         "output_modalities": ["embeddings"], "context_length": info.get("max_tokens"),
         "max_output_length": info.get("dim"), "tasks": info.get("tasks"),
         "precision": info.get("precision")} for i in ids]}
