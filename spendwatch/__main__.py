from spendwatch.cli import main

raise SystemExit(main())
