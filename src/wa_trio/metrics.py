"""Every Prometheus metric in one place (no I/O). Names and labels of the original worker first.

Label values are closed sets (documented in docs/health-and-metrics.md): ``status`` is one of
``STATUSES``; ``error_type`` is a validation code or a send-failure class. No label ever carries a
phone number, a user id or free text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric

from wa_trio import __version__

# no *_created series: the Go worker's client exposes none, and they double the series count
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped upstream

WORKER = "whatsapp"

#: worker_jobs_processed_total{status}: how each job ended.
STATUSES = ("success", "invalid", "failed", "retried", "duplicate", "scheduled", "forwarded")
# status event kinds (docs/status-events.md); wa_trio.events.status uses this tuple
STATUS_EVENTS = ("sent", "delivered", "read", "failed", "retrying")


class Metrics:
    """One registry per worker (tests build their own and read it back)."""

    def __init__(self, queue_name: str, dlq_name: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.queue_name = queue_name
        self.dlq_name = dlq_name
        self.jobs_processed = Counter(
            "worker_jobs_processed_total",
            "Jobs finished, by outcome.",
            ["worker", "status"],
            registry=r,
        )
        self.job_duration = Histogram(
            "worker_job_duration_seconds",
            "Time from receiving a job to acking it.",
            ["worker"],
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.jobs_failed = Counter(
            "worker_jobs_failed_total",
            "Jobs that failed, by error type.",
            ["worker", "error_type"],
            registry=r,
        )
        self.jobs_retried = Counter(
            "worker_jobs_retried_total",
            "Jobs handed back for a later retry.",
            ["worker"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "queue_depth", "Messages ready in the job queue (sampled).", ["queue_name"], registry=r
        )
        self.dlq_size = Gauge(
            "queue_dlq_size",
            "Messages in the dead-letter queue (sampled).",
            ["queue_name"],
            registry=r,
        )
        self.ambiguous = Counter(
            "worker_jobs_ambiguous_total",
            "Jobs found half-sent after a crash (sent again or skipped, per WHATSAPP_AMBIGUOUS).",
            ["worker", "action"],
            registry=r,
        )
        self.throttled = Counter(
            "whatsapp_pacing_throttled_seconds_total",
            "Time sends waited for the pacing rules (rate, per-recipient interval, jitter).",
            registry=r,
        )
        self.pacing_tokens = Gauge(
            "whatsapp_pacing_tokens", "Sends the account-wide token bucket holds now.", registry=r
        )
        self.connect_attempts = Gauge(
            "whatsapp_connect_attempts",
            "WhatsApp connection attempts by this process (neonize; a rising count: flapping).",
            registry=r,
        )
        self.whatsapp_connected = Gauge(
            "whatsapp_connected", "1 when the WhatsApp transport can send.", registry=r
        )
        self.amqp_connected = Gauge(
            "amqp_connected", "1 when the consuming broker connection is up.", registry=r
        )
        self.send_duration = Histogram(
            "whatsapp_send_duration_seconds",
            "Time WhatsApp took to accept a message.",
            registry=r,
            buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.status_events = Counter(
            "whatsapp_status_events_total",
            "Status events published and confirmed by the broker, by status.",
            ["status"],
            registry=r,
        )
        self.status_events_dropped = Counter(
            "whatsapp_status_events_dropped_total",
            "Status events dropped because the buffer was full (broker away for long).",
            registry=r,
        )
        self.status_events_pending = Gauge(
            "whatsapp_status_events_pending",
            "Status events waiting to be published (buffered in memory).",
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "whatsapp_status_webhook_deliveries",
            "Status webhook attempts by result (delivered, retried, rejected, dropped).",
            ["result"],
            registry=r,
        )
        self.webhook_pending = Gauge(
            "whatsapp_status_webhook_pending",
            "Status events in the webhook outbox, not yet delivered.",
            registry=r,
        )
        self.webhook_oldest = Gauge(
            "whatsapp_status_webhook_oldest_pending_seconds",
            "Age of the oldest event in the webhook outbox (0 when empty).",
            registry=r,
        )
        self.receipts_unmatched = Counter(
            "whatsapp_receipts_unmatched",
            "Receipts/statuses for message ids the send ledger does not know (not ours, or "
            "pruned).",
            registry=r,
        )
        self.meta_webhook = Counter(
            "whatsapp_cloud_webhook_requests",
            "Cloud API webhook requests by result (accepted, unsigned, bad_signature, too_large, "
            "bad_json, handshake, handshake_refused).",
            ["result"],
            registry=r,
        )
        self.meta_webhook_items = Counter(
            "whatsapp_cloud_webhook_items",
            "What accepted Cloud API webhooks carried (status_sent, status_delivered, "
            "status_read, status_failed, inbound_dropped).",
            ["kind"],
            registry=r,
        )
        self.jobs_by_kind = Counter(
            "whatsapp_media_jobs",
            "Media jobs whose bytes passed every check, by kind.",
            ["kind"],
            registry=r,
        )
        self.media_fetches = Counter(
            "whatsapp_media_fetches",
            "Media URL fetches by result (fetched, refused, not_found, server_error, "
            "unreachable, timeout, too_large).",
            ["result"],
            registry=r,
        )
        self.media_fetch_seconds = Histogram(
            "whatsapp_media_fetch_duration_seconds",
            "Time to fetch one media URL (redirects included).",
            registry=r,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.media_fetch_bytes = Counter(
            "whatsapp_media_fetch_bytes", "Bytes of media downloaded.", registry=r
        )
        self.media_cache_hits = Counter(
            "whatsapp_media_cache_hits",
            "Media served without a download (url: fresh; revalidated: a 304) or sent without "
            "an upload (upload).",
            ["layer"],
            registry=r,
        )
        self.held_back = Counter(
            "whatsapp_jobs_held_back",
            "Jobs parked by account safety (unanswered_limit, reachout_paused), by code.",
            ["code"],
            registry=r,
        )
        self.optouts = Counter(
            "whatsapp_optouts", "Recipients who opted out by replying a keyword.", registry=r
        )
        self.unanswered_highest = Gauge(
            "whatsapp_unanswered_highest",
            "Most messages sent to one recipient since they last wrote (compare with "
            "whatsapp_unanswered_limit).",
            registry=r,
        )
        self.unanswered_limit = Gauge(
            "whatsapp_unanswered_limit", "WHATSAPP_UNANSWERED_LIMIT (0: off).", registry=r
        )
        self.reachout_paused_until = Gauge(
            "whatsapp_reachout_paused_until_seconds",
            "Until when (Unix time) sends to new contacts wait after WhatsApp's 463 (0: never).",
            registry=r,
        )
        self.inbound = Counter(
            "whatsapp_inbound_messages",
            "Messages the account received, by kind.",
            ["kind"],
            registry=r,
        )
        self.inbound_dropped = Counter(
            "whatsapp_inbound_dropped",
            "Inbound messages not published because the buffer was full (broker away for long).",
            registry=r,
        )
        self.inbound_published = Counter(
            "whatsapp_inbound_published",
            "Inbound messages published and confirmed by the broker.",
            registry=r,
        )
        self.whatsapp_state = Gauge(
            "whatsapp_state",
            "1 for the transport's current state (connecting, waiting_for_login, connected, "
            "disconnected, logged_out, banned, failed), 0 for the others.",
            ["state"],
            registry=r,
        )
        self.account_blocked_until = Gauge(
            "whatsapp_banned_until_seconds",
            "Until when (Unix time) WhatsApp temporarily banned the account (0: not banned).",
            registry=r,
        )
        self.pool_forwarded = Counter(
            "whatsapp_pool_forwarded",
            "Pool jobs forwarded to an account's queue (several accounts), by account.",
            ["account"],
            registry=r,
        )
        self.standby = Gauge(
            "wa_trio_standby",
            "1 while this worker waits as another's standby for the session lock.",
            registry=r,
        )
        self.lease_epoch = Gauge(
            "wa_trio_lease_epoch",
            "The account's lease epoch this worker holds (WHATSAPP_STORE=postgresql; 0: none).",
            registry=r,
        )
        self.takeover_grace = Gauge(
            "wa_trio_lease_takeover_grace_seconds",
            "How long the last take-over of the lease waited for a previous holder to fence "
            "itself (0: it released the lease).",
            registry=r,
        )
        self.replicas_alive = Gauge(
            "wa_trio_replicas_alive",
            "Replicas of this configuration (queue and accounts) alive in the store's registry, "
            "this one included (several accounts on PostgreSQL).",
            registry=r,
        )
        self.accounts_held = Gauge(
            "wa_trio_accounts_held",
            "Accounts whose lease this process holds (several accounts on PostgreSQL).",
            registry=r,
        )
        self.rebalance_moves = Counter(
            "wa_trio_rebalance_moves",
            "Accounts this process gave back to spread them over the replicas.",
            registry=r,
        )
        self.leases_lost = Counter(
            "wa_trio_leases_lost_total",
            "Times this worker fenced itself: its account's lease connection failed.",
            registry=r,
        )
        self.inherited_sending = Gauge(
            "wa_trio_lease_inherited_sending",
            "sending rows of earlier lease epochs found at takeover (the dead holder's "
            "ambiguous window; WHATSAPP_AMBIGUOUS decides them).",
            registry=r,
        )
        self.contained = Counter(
            "wa_trio_contained_errors_total",
            "Units of work whose handling raised and were ended at their boundary (a job: "
            "dead-lettered internal_error; a request: 500; a webhook item: skipped).",
            ["boundary"],
            registry=r,
        )
        self.api_requests = Counter(
            "wa_trio_api_requests_total",
            "Jobs asked of the HTTP send API, by outcome (accepted, repeated, conflict, invalid, "
            "forbidden, limited, unavailable).",
            ["outcome"],
            registry=r,
        )
        self.callback_errors = Counter(
            "wa_trio_callback_errors_total",
            "Callbacks from a foreign thread (neonize events, receipts, QR codes, messages) "
            "that raised; logged and dropped, never raised into trio.",
            ["kind"],
            registry=r,
        )
        self.ledger_failing = Gauge(
            "wa_trio_ledger_failing",
            "1 while the send ledger cannot be written (a full, read-only or lost disk; the "
            "PostgreSQL store away): jobs are held, nothing is sent.",
            registry=r,
        )
        self.oldest_job_age = Gauge(
            "wa_trio_oldest_job_age_seconds",
            "Estimated age of the oldest job waiting in this worker's queue (0: none waiting; "
            "NaN: the broker cannot be asked); within one queue sample of the truth.",
            registry=r,
        )
        self.webhook_limit = Gauge(
            "wa_trio_webhook_outbox_limit",
            "WHATSAPP_STATUS_WEBHOOK_MAX_PENDING: past it the oldest events are dropped "
            "(0: webhooks off).",
            registry=r,
        )
        self.build = Info("wa_trio_build", "Version of the running worker.", registry=r)
        self.build.info({"version": __version__, "worker": WORKER})
        # make the series exist from the start (a scrape before the first job sees zeros)
        for status in STATUSES:
            self.jobs_processed.labels(WORKER, status)
        self.jobs_retried.labels(WORKER)
        for event in STATUS_EVENTS:
            self.status_events.labels(event)
        self.job_duration.labels(WORKER)
        self.queue_depth.labels(queue_name)
        self.dlq_size.labels(dlq_name)

    def processed(self, status: str) -> None:
        assert status in STATUSES, status
        self.jobs_processed.labels(WORKER, status).inc()

    def failed(self, error_type: str) -> None:
        self.jobs_failed.labels(WORKER, error_type).inc()

    def retried(self) -> None:
        self.jobs_retried.labels(WORKER).inc()

    def observe_job(self, seconds: float) -> None:
        self.job_duration.labels(WORKER).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _Labelled:
    """A collector re-exposing other registries' samples with an ``account`` label (one
    family per name across accounts: what Prometheus expects of one target)."""

    def __init__(self, by_account: Callable[[], Mapping[str, Metrics]], own: Metrics) -> None:
        self._by_account = by_account
        self._own = own

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        sources = [("", self._own), *self._by_account().items()]
        for account, metrics in sources:
            for family in metrics.registry.collect():
                merged = families.get(family.name)
                if merged is None:
                    merged = families[family.name] = Metric(
                        family.name, family.documentation, family.type, family.unit
                    )
                for sample in family.samples:
                    labels = {"account": account or "pool", **sample.labels}  # its own wins
                    merged.add_sample(
                        sample.name, labels, sample.value, sample.timestamp, sample.exemplar
                    )
        yield from families.values()


def accounts_exposition(by_account: Callable[[], Mapping[str, Metrics]], own: Metrics) -> bytes:
    """/metrics of a multi-account process: every account's series with ``account``; the
    process's own (the pool's) with ``account="pool"``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Labelled(by_account, own))
    return generate_latest(registry)
