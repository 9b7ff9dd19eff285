from jobsight.cli import main

raise SystemExit(main())
