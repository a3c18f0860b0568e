from cdpd.cli import main

raise SystemExit(main())
