"""wa-trio: a WhatsApp send worker for Trio (RabbitMQ in, WhatsApp out, through neonize)."""

from wa_trio.config.settings import ConfigError, Settings
from wa_trio.core.envelope import ValidationError, WhatsAppEnvelope, parse_envelope

__all__ = [
    "ConfigError",
    "Settings",
    "ValidationError",
    "WhatsAppEnvelope",
    "__version__",
    "parse_envelope",
]

__version__ = "0.1.0"
