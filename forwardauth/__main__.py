from forwardauth.cli import main

raise SystemExit(main())
