from cdpd.launch import main

raise SystemExit(main())
