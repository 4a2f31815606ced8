"""`python -m orchestrator.worker --target mod:Class ...`: run one Python worker."""

import sys

from orchestrator.worker.runtime import main

sys.exit(main())
