"""Exceptions whose message is shown to the user as a one-line error.

Every error that bad input can cause derives from `EcdcError`. The command line prints
`ecdc-stream: error: <message>` and exits with status 1, so each message must name the
value that is wrong and, where there is one, what to do about it.
"""


class EcdcError(Exception):
    """An error caused by the input or the environment, reported without a traceback."""


class InvalidStreamError(EcdcError):
    """The bytes are not a valid .ecdc stream: wrong magic, truncated, or malformed header."""


class UnsupportedStreamError(EcdcError):
    """The stream is valid but needs a feature that this version cannot decode."""


class InvalidAudioError(EcdcError):
    """The audio input is missing, unreadable or empty, or contains NaN or infinite samples."""


class ModelNotFoundError(EcdcError):
    """No model of that name is known, or its checkpoint file cannot be found or loaded."""


class InvalidArgumentError(EcdcError):
    """An option has a value the chosen model or format does not accept."""
