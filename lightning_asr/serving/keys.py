"""Who may use which adapter: user ids, per-user access keys (stored as digests) and the request's checks."""

from __future__ import annotations

import hashlib
import hmac
import re
from pathlib import Path

from lightning_asr.serving.errors import ServeError

USER_KEY_FILE = "access_key.sha256"  # in a user's adapter directory: the hex SHA-256 of the user's key
USER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}")  # fullmatch: "$" would let a final newline in


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def write_user_key(user_directory: str | Path, key: str) -> Path:
    """Store ``key``'s digest in a user's adapter directory (the server never keeps the key itself)."""
    path = Path(user_directory) / USER_KEY_FILE
    path.write_text(key_digest(key) + "\n")
    return path


def check_user_key(directory: Path, user: str, key: str | None, required: bool) -> None:
    """401 when a key is needed and missing, 403 when it is wrong; nothing when the user has no key file and
    keys are not required."""
    path = directory / USER_KEY_FILE
    if not path.is_file():
        if required:
            raise ServeError(
                403,
                f"user {user!r} has no access key and the server requires one — fix: store one with "
                f"lightning_asr.serving.write_user_key({str(directory)!r}, KEY)",
            )
        return
    if not key:
        raise ServeError(401, f"user {user!r} needs an access key — fix: send it in the X-User-Key header")
    if not hmac.compare_digest(path.read_text().strip(), key_digest(key)):
        raise ServeError(403, f"wrong access key for user {user!r}")


def check_request(store: Path, user: str | None, files: dict | None, user_key: str | None, required: bool) -> None:
    """The request names a valid user and carries that user's key where one is needed; an upload names its
    user where keys are required; a request with neither user nor files is the base's (refused where every
    request needs a user)."""
    if user is None and files is None:
        if required:
            raise ServeError(401, "this server requires a user and the user's key for every request")
        return
    if user is not None and files is not None and not required:
        raise ServeError(400, "give either a user id or the adapter files, not both")
    if user is not None and not USER_ID.fullmatch(user):
        raise ServeError(400, f"invalid user id {user!r:.140} — fix: letters, digits and _ . @ - only, at most 128")
    if files is not None and required and user is None:
        raise ServeError(
            401,
            "this server requires an uploaded adapter to name its user and carry the user's key — fix: "
            "send the user field and the X-User-Key header with the files",
        )
    if user is not None:
        check_user_key(store / user, user, user_key, required)


def api_key_valid(token: str, digests: list[str]) -> bool:
    given = key_digest(token)
    return any(hmac.compare_digest(given, digest) for digest in digests)
