"""Celery's consumer, made to tell the sender when a message cannot be decoded.

Celery decodes a task's body in the consumer; on failure it logs, acks and drops the message, and the
caller's `result.get()` waits forever. Recording a FAILURE for the task id (known from the headers, which
are plain JSON) turns a bad payload into a failed task that its caller sees, and the worker carries on.
"""

from __future__ import annotations

import logging

from celery.worker.consumer import Consumer as CeleryConsumer

from .errors import PayloadError

logger = logging.getLogger(__name__)


class Consumer(CeleryConsumer):
    def on_decode_error(self, message, exc):
        super().on_decode_error(message, exc)
        self._fail_task(message, f"its message could not be decoded: {exc}")

    def on_invalid_task(self, body, message, exc):
        super().on_invalid_task(body, message, exc)
        self._fail_task(message, f"its message was refused: {exc}")

    def _fail_task(self, message, why: str) -> None:
        headers = message.headers or {}
        task_id, name = headers.get("id"), headers.get("task")
        if not task_id or headers.get("ignore_result") or self.app.conf.result_backend is None:
            return
        error = PayloadError(f"task {name}[{task_id}] did not run: {why}")
        try:
            self.app.backend.mark_as_failure(task_id, error)
        except Exception:
            # The message is already gone; a broken result store must not take the consumer down too.
            logger.exception("could not record the failure of task %s[%s]", name, task_id)
