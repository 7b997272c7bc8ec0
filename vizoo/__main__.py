"""``python -m vizoo`` runs the ``vizoo`` command."""

from vizoo.cli import main

raise SystemExit(main())
