"""``python -m thinchat.train --config configs/NAME.yaml [key=value ...] [--resume [DIR]]``.

Why a module entry: the DeepSpeed, torchrun and accelerate launchers start a module in each process;
this is the same code path as ``thinchat train``.
"""

import sys

from thinchat.commands.train import main

sys.exit(main())
