import sys

from thinchat.cli import main

sys.exit(main())
