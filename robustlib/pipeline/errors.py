"""The error every parameter check raises (a module of its own: params and sweeps both raise it)."""


class ParamsError(ValueError):
    """Bad parameters: the message names the key and what is expected."""
