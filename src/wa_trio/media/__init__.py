"""wa_trio.core.media_rules."""
