"""Web demo: ``python web_demo.py --from_pretrained DIR [--host] [--port] [--share] [--lang zh|en]``.

Thin wrapper around ``thinchat web`` (thinchat/commands/web.py) so the demo runs from a checkout.
"""

import sys

from thinchat.commands.web import main

if __name__ == "__main__":
    sys.exit(main())
