"""wa_trio.accounts.multi."""
