"""`python -m sam_veteran.trainer.mini STAGE`: the same stages as `sam-veteran mini train --stage STAGE`."""

from .cli import main

raise SystemExit(main())
