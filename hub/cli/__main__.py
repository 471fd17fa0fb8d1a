"""`python -m hub.cli`: the tunehub command line."""

from .main import main

raise SystemExit(main())
