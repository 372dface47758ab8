import sys

from kvmworker.cli import main

sys.exit(main())
