"""What a train step keeps for its backward pass, per layer and outside the layers, from shapes alone.

    python scripts/memory.py                                  # 151M 4 x 2048 bf16-compute and 88M 8 x 2048 bf16
    python scripts/memory.py --track 4.5loss --remat full --loss-chunk 1024
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jax_nano.bench.memory import main  # noqa: E402
from jax_nano.core.cli import run_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_main(main))
