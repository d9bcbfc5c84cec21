"""``python -m minillm``: the same program as the ``minillm`` console script."""
import sys

from .cli import main

sys.exit(main())
