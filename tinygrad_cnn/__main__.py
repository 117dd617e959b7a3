"""``python -m tinygrad_cnn ...``: the same as the ``tinygrad-cnn`` command."""
import sys

from .cli import main

sys.exit(main())
