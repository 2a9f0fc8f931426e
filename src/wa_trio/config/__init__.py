"""wa_trio.config.settings."""
