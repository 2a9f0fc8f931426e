"""wa_trio.stores."""
