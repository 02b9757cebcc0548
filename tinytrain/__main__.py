"""``python -m tinytrain`` = the ``tinytrain`` command."""

from tinytrain.cli import main

raise SystemExit(main())
