"""`python -m lipcore ...`: see lipcore.cli."""

from lipcore.cli import main

raise SystemExit(main())
