"""wa_trio.web.app."""
