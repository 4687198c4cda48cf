"""What the Hub modules share: the error type and repo-id checks."""

from __future__ import annotations

from sslvit.errors import InputError

__all__ = ["PublishError", "check_repo_id"]


class PublishError(InputError):
    """Publishing or loading cannot go on; the message says what is wrong and how to fix it."""


def check_repo_id(repo_id: str, need_namespace: bool = True) -> str:
    """Return ``repo_id`` if it is a valid Hub model id (``ORG/NAME``), else raise :class:`PublishError`."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not isinstance(repo_id, str) or not repo_id:
        raise PublishError("invalid repo id: empty; expected ORG/NAME")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise PublishError(f"invalid repo id {repo_id!r}: {err}") from None
    if need_namespace and repo_id.count("/") != 1:
        raise PublishError(f"invalid repo id {repo_id!r}: expected ORG/NAME (a namespace and a name)")
    return repo_id
