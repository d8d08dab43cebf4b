"""`python -m worker` runs the same command line as the `worker` script."""

from worker.cli import main

raise SystemExit(main())
