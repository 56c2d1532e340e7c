"""One exception type for every user-facing problem, so the CLI can print it as one line and exit 1."""

from __future__ import annotations


class RecurlError(Exception):
    """A problem with the user's input (env id, option, observation, checkpoint, dataset).

    The message names the problem and says what to do about it; the CLI prints it without a traceback.
    """
