"""One exception for everything a user can get wrong: str() is "problem; fix"."""


class Error(Exception):
    """Printed by the CLI as `crate: <problem>; <fix>`; `status` is the exit status."""

    def __init__(self, problem, fix=None, status=1):
        super().__init__(f"{problem}; {fix}" if fix else problem)
        self.problem, self.fix, self.status = problem, fix, status


class NotFound(Error):
    """No such container (or image)."""
