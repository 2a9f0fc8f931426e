"""wa_trio.bus."""
