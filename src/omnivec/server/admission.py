"""Admission by estimated cost: global budgets of the work every request in flight holds.

Why: counting queued items let one small request take gigabytes (a 16-page PDF, eight large
PNGs, a multi-vector answer). Each request reserves what it will hold *before* the step that
allocates it, and gives it back when done:

* ``items``: inputs, at admission (known from the body).
* ``pixels``: decoded image and PDF-page pixels, from headers and page sizes, before decoding;
  given back once the inputs are prepared.
* ``tokens`` and ``bytes``: the prepared rows' tokens and the memory they hold while queued
  (:attr:`~omnivec.models.base.Prepared.held_bytes`), before they join the queue; given back
  when the forward passes are done.
* ``values``: numbers in the response (``pipeline.output_values``), before the forward; given
  back when the response has been sent.

Over a budget -> :class:`Overloaded` (the server answers 503 + Retry-After), and the request
gives back everything it holds. A request is always admitted for a resource nobody else
holds, whatever its size (its own limits bound it, and it could never run otherwise).
"""
from __future__ import annotations

import threading
from typing import Callable, Mapping

RESOURCES = ("items", "pixels", "tokens", "bytes", "values")
SETTING = {"items": "max_pending_items", "pixels": "max_decoding_pixels", "tokens": "max_pending_tokens",
           "bytes": "max_pending_bytes", "values": "max_pending_values"}


class Overloaded(Exception):
    """Admission refused: a global budget is full. ``retry_after`` is in seconds."""

    def __init__(self, retry_after: int, resource: str = "items") -> None:
        super().__init__(f"server is busy (the {resource} budget, {SETTING.get(resource, resource)}, is in use "
                         f"by other requests); retry after {retry_after} s")
        self.retry_after = retry_after
        self.resource = resource


class Admission:
    """The global budgets; thread-safe (pixels are reserved from a preparation thread)."""

    def __init__(self, capacity: Mapping[str, int], retry_after: Callable[[], int],
                 on_refused: Callable[[str], None] | None = None) -> None:
        unknown = set(capacity) - set(RESOURCES)
        if unknown:
            raise ValueError(f"unknown budgets {sorted(unknown)}; known: {RESOURCES}")
        self.capacity = {r: int(capacity.get(r, 0)) or None for r in RESOURCES}   # None: unbounded
        self.in_use = dict.fromkeys(RESOURCES, 0)
        self._retry_after = retry_after
        self._on_refused = on_refused
        self._lock = threading.Lock()

    def ticket(self) -> Ticket:
        """A new request's (empty) set of reservations."""
        return Ticket(self)

    def _reserve(self, ticket: Ticket, resource: str, amount: int) -> None:
        with self._lock:
            others = self.in_use[resource] - ticket.held[resource]
            cap = self.capacity[resource]
            refused = cap is not None and others > 0 and self.in_use[resource] + amount > cap
            if not refused:
                self.in_use[resource] += amount
                ticket.held[resource] += amount
                return
        if self._on_refused is not None:
            self._on_refused(resource)
        raise Overloaded(self._retry_after(), resource)

    def _release(self, ticket: Ticket, resource: str) -> None:
        with self._lock:
            self.in_use[resource] -= ticket.held[resource]
            ticket.held[resource] = 0


class Ticket:
    """One request's reservations. ``release()`` gives back all (idempotent); use ``with``."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self.held = dict.fromkeys(RESOURCES, 0)

    def reserve(self, resource: str, amount: int) -> None:
        """Hold ``amount`` more of ``resource``; :class:`Overloaded` (holding nothing more) if full."""
        if amount > 0:
            self.admission._reserve(self, resource, int(amount))

    def release(self, *resources: str) -> None:
        """Give back the named resources (all when none are named)."""
        for r in resources or RESOURCES:
            if self.held[r]:
                self.admission._release(self, r)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
