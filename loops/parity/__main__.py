"""``python -m loops.parity``: the parity tool's command line (see ``loops.parity``)."""

import sys

from loops.parity import main

sys.exit(main())
