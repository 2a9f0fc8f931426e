from wa_trio.cli import entry_point

entry_point()
