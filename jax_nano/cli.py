"""What every command line of the project shares: one-line errors instead of tracebacks."""

import sys

from configs.errors import UserError


def run_main(main, argv=None) -> int:
    try:
        return main(argv) or 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
