"""`python -m eval ...` is `python -m eval.harness ...`."""

from .harness import main

raise SystemExit(main())
