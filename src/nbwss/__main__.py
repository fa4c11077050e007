"""`python -m nbwss` runs the same command as the `nbwss` console script."""

from nbwss.cli import main

raise SystemExit(main())
