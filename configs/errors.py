"""The base of every error whose message is written for the user: one line naming the problem and the fix.
Command lines print it without a traceback and exit with code 2 (jax_nano/core/cli.py)."""


class UserError(Exception):
    pass
