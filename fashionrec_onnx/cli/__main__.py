"""`python -m fashionrec_onnx.cli ...` runs the `fashionrec` command."""

import sys

from .main import main

sys.exit(main())
