"""One exception type for everything a user can get wrong or the world can break.

The CLI prints it as `crate-image: <problem>; <fix>` and exits non-zero; the Python API raises it.
"""


class ImageError(Exception):
    """A problem with a short fix: str() is 'problem; fix'."""

    def __init__(self, problem, fix=None):
        super().__init__(f"{problem}; {fix}" if fix else problem)
        self.problem, self.fix = problem, fix


class InvalidReference(ImageError):
    """An image reference that does not parse."""


class RegistryError(ImageError):
    """The registry refused or failed a request."""


class AuthError(RegistryError):
    """Credentials are missing or wrong."""


class NotFound(ImageError):
    """An image, tag or blob does not exist (in the registry or in the store)."""


class DigestMismatch(ImageError):
    """Content does not hash to the digest that names it."""


class UnsafeLayer(ImageError):
    """A layer tries to write outside its root or is otherwise malformed."""
