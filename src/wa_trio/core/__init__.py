"""wa_trio.core."""
