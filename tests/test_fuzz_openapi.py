"""Fuzz the HTTP API from its own served ``/openapi.json`` (schemathesis), in-process over ASGI.

Requests are generated from the schema the app serves (valid ones and, on purpose, invalid
ones) and sent to ``create_app`` around a fast fake model. Every response must pass
schemathesis's default checks: no 5xx, a documented status code and content type, a body that
matches the documented response schema, schema-invalid requests refused with a 4xx, methods
the schema does not list answered 405, ...

* ``test_fuzz_schema``: every operation, with bodies exactly as the schema allows: the model
  name is a random string, so ``/v1/embeddings`` mostly ends in a 404 after validation. That
  makes ``positive_data_acceptance`` meaningful here: a schema-valid body must never be a 422,
  i.e. the served JSON Schema and the server's own validation agree.
* ``test_fuzz_embeddings_served_model``: ``/v1/embeddings`` with ``model`` pinned to a served
  name, so requests reach preparation, the engine and the response encoders. A schema-valid
  body can still be a 422 there (``dimensions`` over the model's size, an undecodable image,
  ``return_tokenized_input`` without ``return_multivector``: rules no JSON Schema states), so
  ``positive_data_acceptance`` is off for it; every other check stays on.
* ``test_fuzz_with_api_key`` / ``test_fuzz_without_api_key``: a server with an API key, fuzzed
  with the key (the authenticated paths) and without it (each protected operation must answer
  a documented 401 carrying the error envelope).

Schemathesis's ASGI transport runs the app's lifespan (which starts the engine) once per app
and keeps it up for the rest of the process; the ``*_server`` fixtures check ``/ready`` first,
so a "model still loading" 503 can never make the fuzzing vacuous. Runs are reproducible: a
fixed seed, derandomized Hypothesis, no example database.
"""
from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from omnivec.embedder import Embedder
from omnivec.server import ServerSettings, create_app
from omnivec.testing import FakeModel

KEY = "k"
AUTH = {"Authorization": f"Bearer {KEY}"}
SERVED_MODEL = "default"  # always among the served names, next to the model id and the aliases
SEED = 20240601


def fuzz_config(*, positive_data_acceptance: bool = True) -> Any:
    """The schemathesis configuration (explicit, so no ``schemathesis.toml`` is looked up)."""
    return schemathesis.Config.from_dict({
        "seed": SEED,
        "generation": {"mode": "all"},  # schema-valid and schema-invalid requests
        "checks": {"positive_data_acceptance": {"enabled": positive_data_acceptance}},
    })


def pin_model(case: Any) -> None:
    """A served model name in place of a generated one (any string is schema-valid, so a case's
    validity does not change; a non-string ``model`` of a negative case is left alone). Done here
    rather than with a ``body.model`` config override, which the coverage phase does not apply."""
    if isinstance(case.body, dict) and isinstance(case.body.get("model"), str):
        case.body["model"] = SERVED_MODEL


def fuzz_settings(max_examples: int) -> settings:
    """Bounded, reproducible Hypothesis settings (the coverage phase adds its own fixed cases)."""
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                           HealthCheck.data_too_large])


def assert_ready(schema: Any) -> None:
    """The lifespan ran and the engine is attached (else every embedding would be a 503)."""
    response = schema["/ready"]["GET"].Case().call()
    assert response.status_code == 200, (
        f"/ready answered {response.status_code} {response.text!r}: the app's lifespan did not run "
        "under schemathesis's ASGI transport (schemathesis>=4.32 runs it)")


# ------------------------------------------------------------------ open server (no API keys)
app = create_app(Embedder(FakeModel()), ServerSettings())
schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=fuzz_config())
served = schemathesis.openapi.from_asgi(
    "/openapi.json", app, config=fuzz_config(positive_data_acceptance=False),
).include(path="/v1/embeddings", method="POST")


@pytest.fixture(scope="module")
def open_server() -> None:
    assert_ready(schema)


@schema.parametrize()
@fuzz_settings(max_examples=40)
def test_fuzz_schema(case, open_server):
    case.call_and_validate()


@served.parametrize()
@fuzz_settings(max_examples=100)
def test_fuzz_embeddings_served_model(case, open_server):
    pin_model(case)
    case.call_and_validate()


# ------------------------------------------------------------------ server with an API key
keyed_app = create_app(Embedder(FakeModel()), ServerSettings(api_keys=[KEY]))
keyed = schemathesis.openapi.from_asgi(  # /openapi.json itself may need the key
    "/openapi.json", keyed_app, config=fuzz_config(positive_data_acceptance=False),
    headers=AUTH,
)


@pytest.fixture(scope="module")
def keyed_server() -> None:
    assert_ready(keyed)


@keyed.parametrize()
@fuzz_settings(max_examples=30)
def test_fuzz_with_api_key(case, keyed_server):
    pin_model(case)
    case.call_and_validate(headers=AUTH)


@keyed.parametrize()
@fuzz_settings(max_examples=5)
def test_fuzz_without_api_key(case, keyed_server):
    response = case.call_and_validate()
    # The coverage phase also sends methods the schema does not list (a 405 before any auth).
    if case.path not in ("/health", "/ready") and case.method.upper() == case.operation.method.upper():
        assert response.status_code == 401, (response.status_code, response.text)
