from degl.cli import main

raise SystemExit(main())
