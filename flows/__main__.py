from flows.core.cli import main

raise SystemExit(main())
