"""wa_trio.cli.main."""
