"""wa_trio.events."""
