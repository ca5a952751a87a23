from bestckpt.cli import main

raise SystemExit(main())
