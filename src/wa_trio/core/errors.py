"""Our exception hierarchy. Every error that can end a job carries a stable, machine-readable
``code``: it goes to dead-letter headers (``x-error-code``), to metric labels (``error_type``)
and to logs, so the set of codes is closed and documented (README, docs/health-and-metrics.md)."""

from __future__ import annotations

import traceback

from wa_trio.core.retry import AMBIGUOUS_CODES


class WaTrioError(Exception):
    """Base class of every error wa-trio raises on purpose."""

    code: str = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class SendError(WaTrioError):
    """Sending through the transport failed.

    ``transient`` tells the pipeline whether retrying can help (network, not connected, WhatsApp
    busy) or not (the number is not on WhatsApp, the message is refused for good).

    ``ambiguous`` (from the code, ``policy.AMBIGUOUS_CODES``): WhatsApp may have taken the
    message although the send failed (a timeout waiting for its answer); retrying may send it
    twice, so WHATSAPP_AMBIGUOUS decides.
    """

    code = "send_failed"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        transient: bool = True,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.transient = transient
        #: the peer's hint (seconds) before a retry can succeed (a rate limit's reset time)
        self.retry_after = retry_after

    @property
    def ambiguous(self) -> bool:
        return self.code in AMBIGUOUS_CODES


class NotConnectedError(SendError):
    """The transport is not connected to WhatsApp; the job must wait, not burn a retry."""

    code = "not_connected"


class TopologyError(WaTrioError):
    """The broker refused our queue/exchange declarations (usually: other arguments exist)."""

    code = "topology_mismatch"


class BrokerRefusedError(TopologyError):
    """The broker refused our login or virtual host: configuration, not an outage; retrying
    cannot help, so it is not retried (one line, exit code 2)."""

    code = "broker_refused"


class TransportError(WaTrioError):
    """The WhatsApp transport cannot work in this process (library missing, too many
    reconnects: a clean restart by the supervisor is the cure); the worker exits non-zero."""

    code = "transport_unavailable"


def tidy_traceback(error: BaseException, frames: int = 12) -> str:
    """Where ``error`` was raised: the last ``frames`` frames and its type, never its message
    (a message may quote a job's text or number: the logs must not)."""
    stack = traceback.extract_tb(error.__traceback__)[-frames:]
    return "".join(traceback.format_list(stack)) + type(error).__name__


def first_leaf(error: BaseException) -> BaseException:
    """The first leaf of an exception group (the one line the CLI prints)."""
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error
