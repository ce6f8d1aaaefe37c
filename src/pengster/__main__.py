"""``python -m pengster``: the ``pengster`` command line."""

from pengster.cli import main

raise SystemExit(main())
