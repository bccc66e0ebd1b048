import sys

from sret.cli import main

sys.exit(main())
