import sys

from smollm3.cli import main

sys.exit(main())
