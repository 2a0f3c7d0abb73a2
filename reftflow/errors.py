"""The one base class of "the user's input is wrong" errors (a params key, a data line, a grader).

Entry points catch `InputError` alone and turn it into one line and exit code 2; nothing else is a
user error. Each subclass lives beside the code that raises it.
"""


class InputError(ValueError):
    """A bad input: the message is one line naming the file, key or line and what is wrong."""
