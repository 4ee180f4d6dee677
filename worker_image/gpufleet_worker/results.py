"""Results written in the format their reader has: JSON, unless the task came in gpufleet's binary codec.

Celery writes every result of an app with one serializer, and whoever reads it decodes with their own: the
payload in Redis carries no content type. A plain Celery producer (JSON, gpufleet not installed) must get JSON;
a producer that sent its task in `gpufleet-msgpack` (gpufleet_worker.client, or an app that called
`configure(app)`) has the codec and gets arrays as raw bytes. So the worker answers each task in the format of
its message: `mark(request)` notes a binary one when it arrives, and the result backend below encodes that
task's result (and its chord part) in the codec, and every other result as JSON with arrays as nested lists.
"""

from __future__ import annotations

from contextvars import ContextVar

from celery.backends.redis import RedisBackend, SentinelBackend
from kombu.exceptions import EncodeError
from kombu.serialization import dumps as kombu_dumps
from kombu.utils import json as kombu_json

from . import codec, contract
from .errors import PayloadError

# In the task's request (its message headers and Celery's own fields): present when the message was binary.
BINARY_REQUEST = "gpufleet_binary"

_binary_reply: ContextVar[bool] = ContextVar("gpufleet_binary_reply", default=False)


def mark(request) -> None:
    """At a message's arrival (task_received): note whether it came in the codec's binary format."""
    if request.content_type == codec.CONTENT_TYPE and codec.is_binary(request.body):
        request.request_dict[BINARY_REQUEST] = True


class _JSONEncoder(kombu_json.JSONEncoder):
    def default(self, o):
        try:
            return codec.to_json(o)
        except TypeError:
            return super().default(o)


def dumps_json(value) -> str:
    """`value` as Celery's JSON serializer writes it, with arrays and NumPy scalars as lists and numbers."""
    try:
        return kombu_json.dumps(value, cls=_JSONEncoder)
    except PayloadError as exc:
        raise EncodeError(str(exc)) from None
    except (TypeError, ValueError) as exc:
        raise EncodeError(
            f"this result cannot be written as JSON for its plain Celery producer: {exc}"
        ) from None


class _Negotiating:
    """Picks each result's format from its request; reads both (the codec's decoder tells them apart)."""

    def store_result(self, task_id, result, state, traceback=None, request=None, **kwargs):
        token = _binary_reply.set(bool(getattr(request, BINARY_REQUEST, False)))
        try:
            return super().store_result(task_id, result, state, traceback, request=request, **kwargs)
        finally:
            _binary_reply.reset(token)

    def on_chord_part_return(self, request, state, result, **kwargs):
        token = _binary_reply.set(bool(getattr(request, BINARY_REQUEST, False)))
        try:
            return super().on_chord_part_return(request, state, result, **kwargs)
        finally:
            _binary_reply.reset(token)

    def _encode(self, data):
        if _binary_reply.get():
            return kombu_dumps(data, serializer=codec.NAME)
        return "application/json", "utf-8", dumps_json(data)


class NegotiatingRedisBackend(_Negotiating, RedisBackend):
    pass


class NegotiatingSentinelBackend(_Negotiating, SentinelBackend):
    pass


def backend_url(url: str | None) -> str | None:
    """Celery's `result_backend` for a Redis URL: the class above, named the way Celery takes one
    (`module:Class+url`); other backends are left as they are (and write with `result_serializer`)."""
    name = {"redis": "NegotiatingRedisBackend", "sentinel": "NegotiatingSentinelBackend"}.get(
        contract.redis_flavour(url) or ""
    )
    return f"{__name__}:{name}+{url}" if name else url
