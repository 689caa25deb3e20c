import sys

from vmjax.sweep.cli import main

sys.exit(main())
