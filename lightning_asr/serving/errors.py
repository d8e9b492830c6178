"""The one exception of the serving path: a refused request, with its HTTP status and the fix."""


class ServeError(Exception):
    """A request that cannot be served; ``status`` is the HTTP status, the message names problem and fix."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message
