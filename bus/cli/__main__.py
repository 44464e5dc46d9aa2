"""`python -m bus.cli`: the `agentbus` command."""

import sys

from bus.cli import main

sys.exit(main())
