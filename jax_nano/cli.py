"""What every command line of the project shares: one-line errors instead of tracebacks."""

import sys

from configs.model import ConfigError

# Errors whose message is written for the user: printed as one line, exit code 2, no traceback.
USER_ERRORS: tuple[type[Exception], ...] = (ConfigError,)


def register_user_error(*errors: type[Exception]) -> None:
    global USER_ERRORS
    USER_ERRORS = USER_ERRORS + errors


def run_main(main, argv=None) -> int:
    try:
        return main(argv) or 0
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
