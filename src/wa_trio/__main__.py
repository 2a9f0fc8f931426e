from wa_trio.cli.main import entry_point

entry_point()
