"""Errors the command line reports as a one-line message (exit code 2), not a traceback."""


class UserFacingError(Exception):
    pass


class TrainError(UserFacingError):
    """``verydeep train`` refused its options or data, or the run diverged."""
