"""Task names: the HTTP API's names and the reference's (adapter, prompt_name) pairs.

A task picks two things per input: which LoRA adapter runs (``retrieval``, ``text-matching``,
``code``) and which prompt prefixes the text (``query`` or ``passage``). Text-matching is
symmetric and always uses the query prompt, as the reference documents.

jina-embeddings-v3 adds ``separation`` and ``classification`` (symmetric too) and has one
adapter per API task (``retrieval.query`` and ``retrieval.passage`` are two adapters there):
a model's :class:`~omnivec.models.base.TaskTable` looks a task up by its API name first, then
by its adapter, so the same names serve both generations.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

ADAPTERS = ("retrieval", "text-matching", "code")          # jina-embeddings-v4's adapters
SYMMETRIC = ("text-matching", "separation", "classification")   # one task name, the query prompt
PROMPTS = ("query", "passage")
API_TASKS = {
    "retrieval.query": ("retrieval", "query"),
    "retrieval.passage": ("retrieval", "passage"),
    "text-matching": ("text-matching", "query"),
    "code.query": ("code", "query"),
    "code.passage": ("code", "passage"),
    "separation": ("separation", "query"),          # jina-embeddings-v3
    "classification": ("classification", "query"),  # jina-embeddings-v3
}
# Accepted spellings of adapters (the reference's config uses "text-matching").
_ADAPTER_ALIASES = {"retrieval": "retrieval", "text-matching": "text-matching",
                    "text_matching": "text-matching", "code": "code", "separation": "separation",
                    "classification": "classification"}


@dataclass(frozen=True)
class TaskSpec:
    """The adapter and the prompt one input is embedded with."""

    adapter: str
    prompt: str

    @property
    def api_name(self) -> str:
        if self.adapter in SYMMETRIC:
            return self.adapter
        return f"{self.adapter}.{self.prompt}"


def resolve_task(task: str | TaskSpec, prompt_name: str | None = None) -> TaskSpec:
    """Turn an API task name, or a reference ``task=`` adapter plus ``prompt_name=``, into a TaskSpec.

    >>> resolve_task("retrieval.query")
    TaskSpec(adapter='retrieval', prompt='query')
    >>> resolve_task("code", prompt_name="passage")
    TaskSpec(adapter='code', prompt='passage')
    """
    if isinstance(task, TaskSpec):
        return task
    if not isinstance(task, str):
        raise ValueError(f"task must be a string, got {type(task).__name__}; allowed: {allowed_tasks()}")
    if prompt_name is not None and prompt_name not in PROMPTS:
        raise ValueError(f"unknown prompt_name {prompt_name!r}; allowed: {list(PROMPTS)}")
    if task in API_TASKS:
        adapter, prompt = API_TASKS[task]
        if prompt_name is not None and "." in task and prompt_name != prompt:
            raise ValueError(f"task {task!r} already fixes the prompt to {prompt!r}; got prompt_name={prompt_name!r}")
        return TaskSpec(adapter, prompt)
    if task in _ADAPTER_ALIASES:
        adapter = _ADAPTER_ALIASES[task]
        # text-matching is symmetric: always the query prompt (the reference's documented behaviour).
        prompt = "query" if adapter in SYMMETRIC else (prompt_name or "query")
        return TaskSpec(adapter, prompt)
    raise ValueError(f"unknown task {task!r}; allowed: {allowed_tasks()}")


def resolve_tasks(task: str | TaskSpec | Sequence[str | TaskSpec], n: int,
                  prompt_name: str | None = None) -> list[TaskSpec]:
    """One TaskSpec per input: a single task for all, or a list of one task per input."""
    if isinstance(task, (str, TaskSpec)):
        spec = resolve_task(task, prompt_name)
        return [spec] * n
    if not isinstance(task, (list, tuple)):
        raise ValueError(f"task must be a string or a list of strings, got {type(task).__name__}")
    if len(task) != n:
        raise ValueError(f"task list has {len(task)} entries but there are {n} inputs")
    return [resolve_task(t, prompt_name) for t in task]


def allowed_tasks() -> list[str]:
    return list(API_TASKS) + [a for a in ADAPTERS if a not in SYMMETRIC]
