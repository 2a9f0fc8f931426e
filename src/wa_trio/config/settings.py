"""Settings from the environment (pure: reads a mapping, never the process by itself).

Every variable is declared once, as a field of ``Settings`` (name, default, what it expects,
parser, meaning); ``FIELDS`` is read back from those declarations and the
README's configuration table is checked against this list by a test, so the two cannot drift.
A bad value raises ``ConfigError`` whose message is one line naming the variable, the value
(redacted when it is a secret) and what was expected; the CLI prints it and exits with code 2.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import attrs

from wa_trio.config import grammar as g
from wa_trio.config.redact import redact_url, redact_value, secret_repr
from wa_trio.core.api_keys import ApiKey

#: the Graph API base wa-trio is tested against (a pinned version: Meta changes payloads
#: between versions; docs/cloud-api.md says how to move it)
CLOUD_API_DEFAULT_URL = "https://graph.facebook.com/v24.0"


class ConfigError(Exception):
    """A configuration value is unusable. ``str(error)`` is the one line to show."""

    def __init__(self, variable: str, value: str, expected: str) -> None:
        shown = redact_value(variable, value)
        super().__init__(f"invalid configuration: {variable}={shown!r}: expected {expected}")
        self.variable = variable


@attrs.frozen
class Field:
    """One environment variable: where it goes, its default and what it expects."""

    env: str
    attr: str
    default: str | None
    expected: str
    parse: Callable[[str], Any]
    doc: str


def _setting(
    env: str,
    default: str | None,
    expected: str,
    parse: Callable[[str], Any],
    doc: str,
    **options: Any,
) -> Any:
    """One setting, declared once: its environment variable, default (None: derived from other
    variables, see ``Settings.from_env``), what it expects, its parser and its meaning ride on the
    attrs field as metadata; ``FIELDS`` is read back from them. Secrecy is declared once, in
    ``redact.py`` (by the variable's name): a secret's repr is hidden or redacted from that."""
    return attrs.field(
        metadata={"setting": (env, default, expected, parse, doc)}, repr=secret_repr(env), **options
    )


@attrs.frozen
class Settings:
    """The effective configuration. Build it with ``Settings.from_env(os.environ)``."""

    # fmt: off
    # a table: one setting each, at most four lines (env, default, expected, parser, meaning)
    rabbitmq_url: str = _setting("RABBITMQ_URL", None, "an amqp:// or amqps:// URL", g.amqp_url,
        "Broker URL; overrides the five RABBITMQ_* parts below. A cluster: its nodes as the "
        "host, comma-separated (amqp://u:p@node1:5672,node2:5672/vh); the next on failure.")
    rabbitmq_user: str = _setting("RABBITMQ_USER", "woragis", "a user name", g.nonempty,
        "Broker user.")
    rabbitmq_password: str = _setting("RABBITMQ_PASSWORD", "woragis", "a password", g.text,
        "Broker password (never logged).")
    rabbitmq_host: str = _setting("RABBITMQ_HOST", "rabbitmq", "a host name", g.nonempty,
        "Broker host.")
    rabbitmq_port: int = _setting("RABBITMQ_PORT", "5672", "a TCP port 1-65535", g.port,
        "Broker port.")
    rabbitmq_vhost: str = _setting("RABBITMQ_VHOST", "woragis", "a virtual host name", g.text,
        "Broker virtual host.")
    queue_name: str = _setting("WHATSAPP_QUEUE_NAME", "whatsapp.queue", "a queue name", g.nonempty,
        "Queue the jobs are consumed from.")
    exchange: str = _setting("WHATSAPP_EXCHANGE", "woragis.notifications",
        "an exchange name", g.nonempty,
        "Exchange the queue is bound to (jobs and status events are published here).")
    routing_key: str = _setting("WHATSAPP_ROUTING_KEY", "whatsapp.send",
        "a routing key", g.nonempty,
        "Routing key binding the queue to the exchange.")
    exchange_type: str = _setting("WHATSAPP_EXCHANGE_TYPE", "topic",
        "direct, topic, fanout or headers", g.choice("direct", "topic", "fanout", "headers"),
        "Type of WHATSAPP_EXCHANGE.")
    queue_type: str = _setting("WHATSAPP_QUEUE_TYPE", "classic", "classic or quorum",
        g.choice("classic", "quorum"), "Type of every queue wa-trio declares; quorum for a "
        "RabbitMQ cluster (replicated; a delivery limit; docs/scaling.md).")
    prefetch_count: int = _setting("WHATSAPP_PREFETCH_COUNT", "1",
        "an integer from 1 to 65535", g.prefetch,
        "Unacknowledged jobs the broker may hand the worker at once.")
    dlx: str = _setting("WHATSAPP_DLX", None, "an exchange name", g.nonempty,
        "Dead-letter exchange (default: <WHATSAPP_EXCHANGE>.dlx).")
    dlq_name: str = _setting("WHATSAPP_DLQ_NAME", None, "a queue name", g.nonempty,
        "Dead-letter queue (default: <WHATSAPP_QUEUE_NAME>.dlq).")
    session_path: Path = _setting("WHATSAPP_SESSION_PATH", "/app/session", "a directory path", Path,
        "Folder of the WhatsApp session (whatsapp.db) and the send ledger (ledger.db).")
    store: str | None = _setting("WHATSAPP_STORE", "sqlite", "sqlite or a "
        "postgresql://user:password@host:port/database URL", g.store, "Where sessions, the send "
        "ledger, the opt-out list and the caches live: files under WHATSAPP_SESSION_PATH, or "
        "PostgreSQL (replicas on several hosts, a lease per account; docs/scaling.md).")
    transport: str = _setting("WHATSAPP_TRANSPORT", "neonize",
        "neonize, cloud-api or dry-run", g.choice("neonize", "cloud-api", "dry-run"),
        "neonize sends as a linked device; cloud-api through Meta's WhatsApp Business Cloud API "
        "(docs/cloud-api.md); dry-run never touches WhatsApp.")
    cloud_api_url: str = _setting("WHATSAPP_CLOUD_API_URL", CLOUD_API_DEFAULT_URL,
        "an http:// or https:// URL", g.base_url,
        "cloud-api: the Graph API base, version included (tests point it at loopback).")
    cloud_phone_number_id: str | None = _setting("WHATSAPP_CLOUD_PHONE_NUMBER_ID", "",
        "the sending number's id: digits (or empty)", g.optional_digits,
        "cloud-api: the phone number id Meta's WhatsApp Manager shows (required with cloud-api).")
    cloud_access_token: str | None = _setting("WHATSAPP_CLOUD_ACCESS_TOKEN", "",
        "a token without spaces (or empty)", g.optional_secret,
        "cloud-api: a system-user access token (required with cloud-api; never logged).")
    cloud_app_secret: str | None = _setting("WHATSAPP_CLOUD_APP_SECRET", "",
        "a secret without spaces (or empty)", g.optional_secret,
        "cloud-api: the app secret that signs webhooks (X-Hub-Signature-256; required with "
        "cloud-api; never logged).")
    cloud_verify_token: str | None = _setting("WHATSAPP_CLOUD_VERIFY_TOKEN", "",
        "a token without spaces (or empty)", g.optional_secret,
        "cloud-api: the webhook subscription's verify token (required with cloud-api).")
    cloud_mps: int | None = _setting("WHATSAPP_CLOUD_MPS", "", "an integer >= 1 (or empty)",
        g.optional_mps, "cloud-api: messages a second for the number (empty: its tier, read "
        "from Meta: 80, or 1000 once upgraded; 20 for a number shared with the Business app).")
    cloud_daily_limit: int | None = _setting("WHATSAPP_CLOUD_DAILY_LIMIT", "off",
        "an integer >= 1, or off", g.optional_count, "cloud-api: unique recipients a day (your "
        "messaging tier: 250, 2000, 10000, 100000); a new recipient beyond it is held, not lost.")
    dry_run_file: Path | None = _setting("WHATSAPP_DRY_RUN_FILE", "",
        "a file path (or empty)", g.optional_path,
        "dry-run only: append one JSON line per would-be send to this file.")
    dry_run_fail_rate: float = _setting("WHATSAPP_DRY_RUN_FAIL_RATE", "0",
        "a number from 0 to 1", g.fraction,
        "dry-run only: fail this fraction of sends (transient), to rehearse retries.")
    content_filter: bool = _setting("WHATSAPP_CONTENT_FILTER", "on", "on or off", g.on_off,
        "Reject text that looks like SQL injection or XSS (the original's policy).")
    schedule_max: float = _setting("WHATSAPP_SCHEDULE_MAX", "30d",
        "a duration like 30d", g.duration,
        "How far ahead a job's send_at may be; beyond: dead-lettered schedule_too_far.")
    templates_dir: Path | None = _setting("WHATSAPP_TEMPLATES_DIR", "",
        "a directory path (or empty)", g.optional_path,
        "Message templates (NAME.txt, NAME.LANG.txt; Jinja2, sandboxed) for jobs that name a "
        "template; compiled at start (docs/templates.md).")
    media_max_bytes: int | None = _setting("WHATSAPP_MEDIA_MAX_BYTES", "",
        "a size like 16MB or a byte count (or empty)", g.optional_size,
        "One size cap for every media kind; empty: WhatsApp's own per-kind limits "
        "(docs/media.md).")
    media_timeout: float = _setting("WHATSAPP_MEDIA_TIMEOUT", "30s",
        "a duration like 30s", g.duration,
        "How long fetching one media URL may take, redirects included.")
    media_allow_private: bool = _setting("WHATSAPP_MEDIA_ALLOW_PRIVATE", "off",
        "on or off", g.on_off,
        "Allow media URLs that resolve to loopback, private, link-local or metadata addresses "
        "(off: refused, media_url_refused).")
    media_inline_max_bytes: int = _setting("WHATSAPP_MEDIA_INLINE_MAX_BYTES", "1MB",
        "a size like 1MB or a byte count", g.size,
        "Cap of a job's inline base64 media (decoded); bigger belongs in a URL.")
    media_max_pixels: int = _setting("WHATSAPP_MEDIA_MAX_PIXELS", "40000000",
        "a whole number of pixels", g.positive_int,
        "Largest image or sticker (width x height, read from its header before anything is "
        "decoded); larger is media_too_large. A 490 KB PNG can decode to 650 MB.")
    media_kinds: tuple[str, ...] = _setting("WHATSAPP_MEDIA_KINDS",
        "image,document,video,audio,voice,sticker", "comma-separated media kinds (or empty: "
        "text only)", g.media_kinds, "Media kinds this worker sends (others: media_unsupported). "
        "voice needs ffmpeg; with neonize audio and video too.")
    media_cache_bytes: int = _setting("WHATSAPP_MEDIA_CACHE_BYTES", "256MB",
        "a size like 256MB or a byte count", g.size,
        "Fetched media kept on disk under the session path (by URL and content hash), at most.")
    proxy: str | None = _setting("WHATSAPP_PROXY", "",
        "an http://, https:// or socks5:// URL (or empty)", g.proxy_url,
        "Proxy for the WhatsApp connection (credentials never logged).")
    pair_phone: str | None = _setting("WHATSAPP_PAIR_PHONE", "",
        "+ then 8-15 digits (or empty)", g.optional_phone,
        "Log in by phone pairing code for this number instead of a QR code.")
    shutdown_grace: float = _setting("WHATSAPP_SHUTDOWN_GRACE", "10s",
        "a duration like 10s", g.duration,
        "On SIGTERM, how long in-flight sends may take before the worker exits.")
    retry_delays: tuple[float, ...] = _setting("WHATSAPP_RETRY_DELAYS", "5s,30s,2m,10m,30m",
        "comma-separated durations like 5s,30s,2m", g.durations,
        "Delays before each retry of a failed send; after the last: dead-letter.")
    rate_limit: float | None = _setting("WHATSAPP_RATE_LIMIT", "10/min",
        "N/s, N/min, N/h or off", g.rate,
        "Account-wide send rate (token bucket). docs/account-safety.md explains the default.")
    rate_burst: int = _setting("WHATSAPP_RATE_BURST", "3", "an integer >= 1", g.positive_int,
        "Sends that may go back to back after a quiet period.")
    recipient_interval: float = _setting("WHATSAPP_RECIPIENT_INTERVAL", "10s",
        "a duration like 10s (0 = off)", g.duration,
        "Minimum time between two sends to the same number.")
    send_jitter: float = _setting("WHATSAPP_SEND_JITTER", "2s",
        "a duration like 2s (0 = off)", g.duration,
        "Random extra wait in [0, jitter) before each send.")
    typing: bool = _setting("WHATSAPP_TYPING", "off", "on or off", g.on_off,
        "Show 'typing...' to the recipient for a time growing with the text (neonize only).")
    status_routing_key: str = _setting("WHATSAPP_STATUS_ROUTING_KEY", "whatsapp.status",
        "a routing key (empty disables)", g.text,
        "Publish sent/delivered/read/failed/retrying events to WHATSAPP_EXCHANGE with this key.")
    status_webhook_url: str | None = _setting("WHATSAPP_STATUS_WEBHOOK_URL", "",
        "an http:// or https:// URL (or empty)", g.http_url,
        "Also POST each status event here, signed (docs/status-events.md); durable outbox.")
    status_webhook_secret: str | None = _setting("WHATSAPP_STATUS_WEBHOOK_SECRET", "",
        "16 or more characters without spaces (or empty)", g.optional_token,
        "HMAC-SHA256 key of the webhook signature (required with the URL; never logged).")
    status_webhook_max_pending: int = _setting("WHATSAPP_STATUS_WEBHOOK_MAX_PENDING", "100000",
        "an integer >= 1", g.positive_int,
        "Events the webhook outbox keeps at most; beyond, the oldest are dropped and counted.")
    inbound_routing_key: str = _setting("WHATSAPP_INBOUND_ROUTING_KEY", "whatsapp.inbound",
        "a routing key (empty disables)", g.text,
        "Publish messages the account receives to WHATSAPP_EXCHANGE with this key "
        "(docs/inbound.md).")
    optout_keywords: tuple[str, ...] = _setting("WHATSAPP_OPTOUT_KEYWORDS",
        "STOP,PARAR,SAIR,CANCELAR,UNSUBSCRIBE", "comma-separated words (empty disables)",
        g.keywords, "A reply that is exactly one of these (any case and accents) opts the "
        "sender out.")
    optout_reply: str | None = _setting("WHATSAPP_OPTOUT_REPLY", "",
        "a text of at most 1024 characters (or empty)", g.optional_text,
        "Answer an opt-out once with this text (empty: no answer).")
    unanswered_limit: int | None = _setting("WHATSAPP_UNANSWERED_LIMIT", "off",
        "an integer >= 1, or off", g.optional_count,
        "Messages to one recipient who never answered before a job is held back "
        "(docs/account-safety.md).")
    unanswered_action: str = _setting("WHATSAPP_UNANSWERED_ACTION", "dlq",
        "dlq or delay", g.choice("dlq", "delay"),
        "Over the unanswered limit: dead-letter unanswered_limit, or park the job until the "
        "recipient answers.")
    reachout_pause: float = _setting("WHATSAPP_REACHOUT_PAUSE", "24h",
        "a duration like 24h", g.duration,
        "After WhatsApp's error 463 (reach-out time lock), how long sends to new contacts wait.")
    connect_max_failures: int = _setting("WHATSAPP_CONNECT_MAX_FAILURES", "20",
        "an integer >= 1", g.positive_int,
        "Failed connects in a row before the account goes to state failed (health red) instead "
        "of retrying forever; POST /login/relogin resets it.")
    accounts: tuple[str, ...] = _setting("WHATSAPP_ACCOUNTS", "default", "comma-separated names "
        "(a-z, 0-9, -; 1-32) each with an optional :neonize, :cloud-api or :dry-run", g.accounts,
        "The accounts this worker runs and their transports (else WHATSAPP_TRANSPORT); several: a"
        " queue each, the main queue their pool, routed by what each can send (docs/scaling.md).")
    fallback: str = _setting("WHATSAPP_FALLBACK", "off", "off or cloud-api",
        g.choice("off", "cloud-api"),
        "cloud-api: a job with a cloud_template beside its text, held by a neonize account that "
        "is banned, logged out or failed, is sent once through the Cloud API account instead.")
    standby: bool = _setting("WHATSAPP_STANDBY", "off", "on or off", g.on_off,
        "When another worker holds this session: wait as its standby (take over the moment it "
        "ends, kill -9 included) instead of refusing to start (docs/scaling.md).")
    ambiguous: str = _setting("WHATSAPP_AMBIGUOUS", "resend",
        "resend or skip", g.choice("resend", "skip"),
        "A job that may have been sent (crash before its record, or a send WhatsApp did not "
        "answer in time): send again, or never twice (ack after a crash, DLQ after a timeout).")
    dedup_window: float = _setting("WHATSAPP_DEDUP_WINDOW", "7d", "a duration like 7d", g.duration,
        "How long the send ledger remembers a job key.")
    sample_interval: float = _setting("WHATSAPP_QUEUE_SAMPLE_INTERVAL", "15s",
        "a duration like 15s", g.duration,
        "How often queue_depth and queue_dlq_size are sampled.")
    env: str = _setting("ENV", "development",
        "development or production", g.choice("development", "production"),
        "production: JSON logs, masked phone numbers.")
    log_to_file: bool = _setting("LOG_TO_FILE", "false", "true or false", g.boolean,
        "Also write JSON log lines to LOG_DIR/wa-trio.log.")
    log_dir: Path = _setting("LOG_DIR", "logs", "a directory path", Path,
        "Folder of the log file.")
    http_host: str = _setting("HTTP_HOST", "0.0.0.0", "an address to bind", g.nonempty,  # noqa: S104 - the container default; docs/security.md
        "Address of the HTTP server (health, metrics, login).")
    http_port: int = _setting("HTTP_PORT", "8080", "a TCP port 0-65535", g.http_port,
        "Port of the HTTP server.")
    admin_token: str | None = _setting("WHATSAPP_ADMIN_TOKEN", "",
        "16 or more characters without spaces (or empty)", g.optional_token,
        "Operator token for /login and every route that changes state (HTTP Basic password or "
        "Bearer); unset: one is generated at start and printed once to the terminal.")
    api_keys: tuple[ApiKey, ...] = _setting("WHATSAPP_API_KEYS", "",
        "client:key or client:sha256=HEX, optionally @acct1+acct2, comma-separated", g.api_keys,
        "Keys of the HTTP send API (POST /v1/messages), one per client; unset: the API is off. "
        "Separate from the operator token (docs/http-api.md).")
    api_rate: float = _setting("WHATSAPP_API_RATE", "50/s",
        "a rate like 50/s or 600/min", g.api_rate,
        "Requests per second each API client may make (429 with Retry-After above it).")
    api_batch_max: int = _setting("WHATSAPP_API_BATCH_MAX", "100",
        "a positive integer", g.positive_int,
        "Jobs one POST /v1/messages:batch may carry.")

    # fmt: on
    #: the account these settings are for (``for_account``; "" before it: the process, or
    #: the one account); not an environment variable
    account: str = attrs.field(default="")
    account_transports: tuple[tuple[str, str], ...] = attrs.field(default=())  # name:transport
    lease_epoch: int = attrs.field(default=0)  # the lease held (PostgreSQL): neonize's URL
    #: with several accounts: the process's session folder (the opt-out list every account
    #: shares lives there); None with one account
    shared_session_path: Path | None = attrs.field(default=None)

    @property
    def production(self) -> bool:
        return self.env == "production"

    @property
    def account_name(self) -> str:
        """The account these settings are for (the one configured, with a single account)."""
        return self.account or self.accounts[0]

    @property
    def multi_account(self) -> bool:
        return len(self.accounts) > 1

    def for_account(self, name: str) -> Settings:
        """One account's settings: with several accounts, its own queue
        (``<WHATSAPP_QUEUE_NAME>.<name>``), routing key (``<WHATSAPP_ROUTING_KEY>.<name>``) and
        session folder (``<WHATSAPP_SESSION_PATH>/accounts/<name>``; ``default`` keeps the
        folder itself), sharing the exchange and the dead-letter queue. With one account:
        these settings as they are."""
        if not self.multi_account:
            return self
        folder = self.session_path if name == "default" else self.session_path / "accounts" / name
        return attrs.evolve(
            self,
            transport=self.transport_of(name),
            account=name,
            queue_name=f"{self.queue_name}.{name}",
            routing_key=f"{self.routing_key}.{name}",
            session_path=folder,
            shared_session_path=self.session_path,
        )

    def transport_of(self, name: str) -> str:
        """The transport account ``name`` sends through."""
        return dict(self.account_transports).get(name, self.transport)

    @property
    def transports(self) -> frozenset[str]:
        """The transports the accounts send through."""
        return frozenset(self.transport_of(name) for name in self.accounts)

    @property
    def cloud_account(self) -> str | None:
        """The account that sends through the Cloud API (at most one: WHATSAPP_CLOUD_*
        describe one number), if any."""
        return next((a for a in self.accounts if self.transport_of(a) == "cloud-api"), None)

    @property
    def session_db(self) -> Path:
        return self.session_path / "whatsapp.db"

    @property
    def session_database(self) -> str:
        """What neonize opens for this account's WhatsApp session: the SQLite file, or the
        store's URL with the account's schema as ``search_path``."""
        if self.store is None:
            return str(self.session_db)
        from wa_trio.core.lease_rules import session_store_url

        return session_store_url(self.store, self.account_name, self.lease_epoch)

    @property
    def ledger_db(self) -> Path:
        return self.session_path / "ledger.db"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Parse ``environ``; raise ConfigError (one line) on the first bad value."""
        values: dict[str, Any] = {}
        for field in FIELDS:
            raw = environ.get(field.env)
            if raw is None:
                if field.default is None:
                    continue
                raw = field.default
            try:
                values[field.attr] = field.parse(raw)
            except ValueError:
                raise ConfigError(field.env, raw, field.expected) from None
        values.setdefault("dlx", f"{values['exchange']}.dlx")
        values.setdefault("dlq_name", f"{values['queue_name']}.dlq")
        if "rabbitmq_url" in values:
            _apply_url(values)
        else:
            values["rabbitmq_url"] = build_url(
                values["rabbitmq_user"],
                values["rabbitmq_password"],
                values["rabbitmq_host"],
                values["rabbitmq_port"],
                values["rabbitmq_vhost"],
            )
        if values.get("status_webhook_url") and not values.get("status_webhook_secret"):
            raise ConfigError(
                "WHATSAPP_STATUS_WEBHOOK_SECRET",
                "",
                "a secret of 16 or more characters whenever WHATSAPP_STATUS_WEBHOOK_URL is set",
            )
        _per_account_transports(values, environ.get("WHATSAPP_ACCOUNTS", "default"))
        if len(values["accounts"]) > 1 and values["exchange_type"] in {"fanout", "headers"}:
            raise ConfigError(
                "WHATSAPP_EXCHANGE_TYPE",
                values["exchange_type"],
                "direct or topic with several WHATSAPP_ACCOUNTS (a queue per account is bound "
                "by routing key)",
            )
        return cls(**values)

    @property
    def redacted_url(self) -> str:
        return redact_url(self.rabbitmq_url)

    def as_redacted_dict(self) -> dict[str, str]:
        """Every setting as ``{ENV_NAME: shown value}``, secrets redacted (``wa-trio check``)."""
        from wa_trio.config.describe import shown_settings

        return shown_settings(self)


FIELDS: tuple[Field, ...] = tuple(
    Field(field.metadata["setting"][0], field.name, *field.metadata["setting"][1:])
    for field in attrs.fields(Settings)
    if "setting" in field.metadata
)


_CLOUD_REQUIRED = (
    ("cloud_phone_number_id", "WHATSAPP_CLOUD_PHONE_NUMBER_ID"),
    ("cloud_access_token", "WHATSAPP_CLOUD_ACCESS_TOKEN"),
    ("cloud_app_secret", "WHATSAPP_CLOUD_APP_SECRET"),
    ("cloud_verify_token", "WHATSAPP_CLOUD_VERIFY_TOKEN"),
)


def _require_cloud(values: dict[str, Any]) -> None:
    missing = [env for attr, env in _CLOUD_REQUIRED if not values.get(attr)]
    if missing:  # all of them in one line: four runs to find four was issue 30's complaint
        raise ConfigError(
            ", ".join(missing), "", "a value whenever an account sends through cloud-api"
        )


def _per_account_transports(values: dict[str, Any], raw: str) -> None:
    """Each account's transport (WHATSAPP_ACCOUNTS=name:transport, else WHATSAPP_TRANSPORT):
    the Cloud API's settings when one uses it, one Cloud API account at most, and what
    WHATSAPP_FALLBACK needs."""
    named = g.account_transports(raw)
    values["account_transports"] = named
    if len(values["accounts"]) == 1 and named:  # one account: its transport is the process's
        values["transport"] = named[0][1]
    chosen = dict(named)
    kinds = [chosen.get(name, values["transport"]) for name in values["accounts"]]
    if kinds.count("cloud-api") > 1:  # WHATSAPP_CLOUD_* describe one number
        raise ConfigError("WHATSAPP_ACCOUNTS", raw, "one cloud-api account per process at most")
    if "cloud-api" in kinds:
        _require_cloud(values)
    if values["fallback"] == "cloud-api" and not {"cloud-api", "neonize"} <= set(kinds):
        raise ConfigError(
            "WHATSAPP_FALLBACK",
            "cloud-api",
            "off unless WHATSAPP_ACCOUNTS has a "
            "neonize account and a cloud-api one (shop:neonize,api:cloud-api)",
        )


def config_problems(environ: Mapping[str, str]) -> list[ConfigError]:
    """Every bad value at once (``wa-trio check``), then what only the whole set can tell."""
    problems: list[ConfigError] = []
    for field in FIELDS:
        raw = environ.get(field.env, field.default)
        if raw is None:
            continue
        try:
            field.parse(raw)
        except ValueError:
            problems.append(ConfigError(field.env, raw, field.expected))
    if not problems:
        try:
            Settings.from_env(environ)
        except ConfigError as error:
            problems.append(error)
    return problems


def build_url(user: str, password: str, host: str, port: int, vhost: str) -> str:
    return (
        f"amqp://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/"
        f"{quote(vhost, safe='')}"
    )


def _apply_url(values: dict[str, Any]) -> None:
    """User, password, the first node and the vhost from RABBITMQ_URL (the other nodes of a
    cluster: ``grammar.broker_nodes``)."""
    url = values["rabbitmq_url"]
    scheme, _, rest = url.partition("://")
    netloc, _, tail = rest.partition("/")
    user, _, password = netloc.rpartition("@")[0].partition(":")
    values["rabbitmq_user"] = unquote(user or "guest")
    values["rabbitmq_password"] = unquote(password or "guest")
    values["rabbitmq_host"], values["rabbitmq_port"] = g.broker_nodes(url)[0]
    path = urlsplit(f"{scheme}://x/{tail}").path[1:]
    values["rabbitmq_vhost"] = unquote(path) if path else "/"
