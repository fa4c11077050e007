"""The whole error hierarchy, in one place.

Every error carries a message fit for an admin. The CLI prints it as one line
(`nbwss: error: <message>`); the daemon logs it as an event and keeps running.
Where the vendor's guide names a message, the subclass uses it (spec section 2).
"""

from __future__ import annotations


class NbwssError(Exception):
    """Base of every error we raise on purpose; `str(error)` is the user-facing line."""


class ConfigError(NbwssError):
    """A properties file or a setting is wrong; the message names key, line and expectation."""


class DetailsError(NbwssError):
    """Endpoint details are not valid (file, URL or contents)."""


class TrustError(NbwssError):
    """A certificate could not be obtained, or is not the one pinned."""


class StoreError(NbwssError):
    """The SQLite store or the key file cannot be read or written."""


class StoreBusyError(StoreError):
    """Another connection held the database's lock past the busy timeout: nothing
    wrong with what was asked, it may succeed later."""


class NotFoundError(StoreError):
    """The endpoint (or list) named does not exist in the store."""


class AlreadyExistsError(StoreError):
    """An endpoint with that host name was already added."""


class ConnectError(NbwssError):
    """A connection to an endpoint could not be made or was refused at CONNECT;
    `http_status` is the endpoint's answer when it refused the WebSocket upgrade."""

    def __init__(self, message: str, *, http_status: int | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status


class TokenRefusedError(ConnectError):
    """The endpoint answered CONNECT with `valid: false`; retried on a slower schedule."""


class DecodeError(NbwssError):
    """A frame is not a valid NBWSS message; the message says what is wrong."""


class CommandDecodeError(DecodeError):
    """A COMMAND request whose `id` and `type` can be read, but not the rest: it gets a
    400 answer with the reason instead of falling under `exception.ignoreDecoder`."""

    def __init__(self, reason: str, message_id: str) -> None:
        super().__init__(reason)
        self.message_id = message_id


class NotificationError(NbwssError):
    """A notification offered for intake is not valid; nothing from it is queued."""


# The guide's own words (spec section 2), kept as constants so tests and docs can cite them.
MSG_INVALID_JSON = "JSON contents are not valid"
MSG_ONLY_WSS = "Invalid websocket protocol. Only wss protocol supported"
MSG_INCORRECT_URL = "Incorrect URL"
MSG_INVALID_PARAMETER = "Invalid command parameter"
MSG_NO_URL_CONNECTION = "Failed to open a connection to the remote object referred by the URL"
MSG_UNPARSABLE = "InvalidPacketException Unable to parse JSON content"
MSG_EXISTS = "this entity already exists"
MSG_CERT_MISMATCH = (
    "The certificate did not match the one accepted by the user. Verify the certificate"
)
MSG_NO_SSL = "Failed to set up SSL security"
MSG_TRUSTSTORE_WRITE = "A problem occurred while storing the SSL certificate in the truststore"
MSG_KEYSTORE = "Error loading keystore"
MSG_NOT_FOUND = "no entity was found"


def unable_to_connect(host: str) -> str:
    """The guide's message when a host cannot be reached."""
    return f"Unable to establish connection with host: {host}"


def unable_to_delete_certificate(host: str) -> str:
    """The guide's message when the trust store cannot be updated on delete."""
    return f"Unable to delete certificate for host: {host}"
