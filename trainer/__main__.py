"""`python -m sam_veteran.trainer --config run.yaml` (also under `accelerate launch -m sam_veteran.trainer`)."""

import sys

from .cli import main

sys.exit(main())
