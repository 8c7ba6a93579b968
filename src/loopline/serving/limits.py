"""Slow clients: deadlines for a request's headers and its body.

uvicorn closes an *idle* keep-alive connection (``timeout_keep_alive``) and h11 / httptools cap the
size of a request head, but nothing bounds how long a client may take to send them: a "slowloris"
that trickles one header byte at a time, or declares a body and never sends it, holds a connection
(and, for the body, a request task) for ever. Two deadlines close that:

* **headers** (:class:`HeaderTimeoutProtocol`, the uvicorn HTTP protocol ``loopline serve`` runs): a
  connection must deliver a request's complete head within ``serving.header_timeout`` of opening or of
  the request's first byte; otherwise it is closed without an answer (nothing reached the app).
* **body** (:class:`BodyTimeout`, ASGI middleware): the whole body must arrive within
  ``serving.body_timeout`` of the head; otherwise the request is answered ``408`` (the endpoints' own
  error body, ``Connection: close``) and the connection closed.

The header deadline comes from the environment (``HEADER_TIMEOUT_ENV``, set by ``loopline serve`` for
its workers), since uvicorn builds the protocol, not loopline.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from loopline.serving.errors import RequestTimeout

try:  # what uvicorn's "auto" picks: httptools when installed, else h11
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Base
except ImportError:  # pragma: no cover
    from uvicorn.protocols.http.h11_impl import H11Protocol as _Base  # type: ignore[assignment]

HEADER_TIMEOUT_ENV = "LOOPLINE_HEADER_TIMEOUT"
DEFAULT_HEADER_TIMEOUT = 10.0
PROTOCOL = "loopline.serving.limits:HeaderTimeoutProtocol"  # uvicorn's `http` option


class HeaderTimeoutProtocol(_Base):  # type: ignore[misc,valid-type]
    """uvicorn's HTTP protocol with a deadline on each request head (module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout = float(os.environ.get(HEADER_TIMEOUT_ENV, DEFAULT_HEADER_TIMEOUT))
        self._head_deadline: asyncio.TimerHandle | None = None
        self._waiting_cycle: Any = None  # the cycle current when the deadline was armed

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._head_deadline is None and (self.cycle is None or self.cycle.response_complete):
            self._arm()  # the first bytes of a new request on a kept-alive connection
        super().data_received(data)
        if self._head_deadline is not None and self.cycle is not self._waiting_cycle:
            self._disarm()  # a new request's head is complete: the app has it

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._waiting_cycle = self.cycle
        self._head_deadline = self.loop.call_later(self._header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _expired(self) -> None:
        self._head_deadline = None
        if self.cycle is self._waiting_cycle and not self.transport.is_closing():
            self.transport.close()


class BodyTimeout:
    """ASGI middleware: a request body must arrive within ``seconds`` of its head, else 408 and close."""

    def __init__(self, app: Any, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.seconds
        state = {"complete": False, "timed_out": False}

        async def timed_receive() -> dict[str, Any]:
            if state["complete"]:  # after the body: waiting for a disconnect is not the client's delay
                return await receive()  # type: ignore[no-any-return]
            try:
                message: dict[str, Any] = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
            except TimeoutError:
                state["timed_out"] = True
                raise RequestTimeout(
                    f"the request body did not arrive within {self.seconds:g} s (serving.body_timeout)"
                ) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                state["complete"] = True
            return message

        async def closing_send(message: dict[str, Any]) -> None:
            if state["timed_out"] and message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, timed_receive, closing_send)
