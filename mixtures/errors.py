"""The one error type of the mixture compiler.

Every problem a user can fix (a malformed stats file, an unknown language, a pool
too small for its budget, a manifest edited by hand) is raised as a
``MixtureError`` whose message names the file, line or field at fault, so that
the command line can print it as is instead of a traceback.
"""


class MixtureError(ValueError):
    """Inputs or settings that cannot give a valid mixture; the message says which and why."""
