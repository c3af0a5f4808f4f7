"""The one exception type for user mistakes: the CLI prints its message on one line and exits 2."""


class UserError(Exception):
    """Bad input from the user (a path, a hyperparameter, a file's content).

    The message must be one line that names the problem; the CLI prints it as
    ``error: <message>`` and exits with status 2, without a traceback.
    """
