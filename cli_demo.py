"""Chat with a thinchat checkpoint in the terminal (same as ``thinchat chat``).

    python cli_demo.py --from_pretrained DIR [--image PPL.png XPL.png] [--max-new-tokens N] [--temperature T]

Type questions; ``/image PATH [PATH2]`` switches slide, ``/reset``, ``/save FILE``, ``/help``, ``/quit``.
With piped stdin it prints one answer line per question, for scripts.
"""

from __future__ import annotations

import argparse
import sys

from thinchat.commands.chat import add_arguments, run
from thinchat.errors import ThinchatError
from thinchat.threads import passive_omp_threads


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cli_demo.py", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    passive_omp_threads()  # before torch loads: generation runs on a worker thread
    try:
        return run(args)
    except ThinchatError as exc:
        print(f"cli_demo.py: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
