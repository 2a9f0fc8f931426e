"""wa_trio.worker."""
