"""The jina-v3 family's processor: XLM-R tokenizer, the checkpoint's task instructions, its tasks.

Why its own module: the CPU side of jina-embeddings-v3 differs from the encoder family in one
thing only, where the text prefix comes from: v3 has one LoRA adapter per API task
(``retrieval.query``, ``retrieval.passage``, ``separation``, ``classification``,
``text-matching``) and the instruction each task prepends is in the checkpoint's
``config.json`` (``task_instructions``), not a query/passage prompt pair.
"""
from __future__ import annotations

from typing import Any

from ..tasks import TaskSpec
from .base import TaskTable
from .encoder_processing import EncoderProcessor


class JinaV3Processor(EncoderProcessor):
    """Tokenise ``instruction(task) + text`` with the XLM-R tokenizer (``<s> ... </s>``)."""

    def __init__(self, tokenizer: Any, *, name: str, instructions: dict[str, str], max_tokens: int,
                 pad_id: int, tasks: TaskTable) -> None:
        super().__init__(tokenizer, name=name, prompts={}, max_tokens=max_tokens, pad_id=pad_id, tasks=tasks)
        self.instructions = dict(instructions)

    def instruction(self, task: TaskSpec) -> str:
        """The prefix of ``task``'s adapter (refuses a task the checkpoint has no adapter for)."""
        adapter = self.tasks.adapter_for(task)
        return self.instructions.get(adapter or "", "") or ""

    def prompted_ids(self, text: str, task: TaskSpec) -> list[int]:
        return self.text_ids(self.instruction(task) + text)
