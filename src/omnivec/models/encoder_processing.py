"""The encoder family's processor: prompts, the fast tokenizer, OCR for images, the task table.

Why its own module: everything here is CPU preprocessing, shared by inference, late chunking
and training, and independent of which backend (torch or ONNX Runtime) runs the backbone.
"""
from __future__ import annotations

from typing import Any

from PIL import Image as PILImage

from ..tasks import TaskSpec
from .base import FastTokenizerProcessor, Prepared, PrepareOptions, TaskTable


class EncoderProcessor(FastTokenizerProcessor):
    """Prompt + tokenise (``tokenizers.Tokenizer``, truncation and padding off) and OCR images."""

    def __init__(self, tokenizer: Any, *, name: str, prompts: dict[str, str], max_tokens: int,
                 pad_id: int, tasks: TaskTable = TaskTable()) -> None:
        self.tokenizer = tokenizer
        self.name = name
        self.prompts = prompts
        self.max_tokens = max_tokens
        self.pad_id = pad_id
        self.tasks = tasks
        self.n_special = tokenizer.num_special_tokens_to_add(False)
        specials = tokenizer.post_process(tokenizer.encode("", add_special_tokens=False)).ids
        self._head, self._tail = list(specials[:1]), list(specials[1:])

    def prepare(self, item: Any, task: TaskSpec, options: PrepareOptions) -> Prepared:
        """Prompt + tokenise one text (or the OCR text of an image), truncating to the limit."""
        self.tasks.adapter_for(task)            # an unknown task fails here, naming what exists
        kind = "text"
        ocr_text = None
        if isinstance(item, PILImage.Image):
            from ..ocr import ocr_image
            kind = "image"
            item = ocr_text = ocr_image(item)
        elif not isinstance(item, str):
            raise ValueError(f"{self.name} embeds text (and images via OCR), got {type(item).__name__}")
        limit = self.max_tokens if options.max_tokens is None else min(options.max_tokens, self.max_tokens)
        if limit <= self.n_special:
            raise ValueError(f"max_tokens={limit} leaves no room for text ({self.n_special} special tokens)")
        room = limit - self.n_special
        got = self.bounded_ids(item, room, task)     # never tokenises more than the limit needs
        truncated = got.over
        if truncated and not options.truncate:
            raise ValueError(f"input has {got.count(self.n_special)} tokens but the limit is {limit} "
                             "(truncate=False)")
        ids = self._head + got.ids[:room] + self._tail
        return Prepared(kind=kind, task=task, input_ids=ids, truncated=truncated, ocr_text=ocr_text)

    def prompted_ids(self, text: str, task: TaskSpec) -> list[int]:
        return self.text_ids(self.prompts.get(task.prompt, "") + text)

    def special_ids(self) -> tuple[list[int], list[int]]:
        return list(self._head), list(self._tail)

