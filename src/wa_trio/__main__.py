from wa_trio.cli import main

raise SystemExit(main())
