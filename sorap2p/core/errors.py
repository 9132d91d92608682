"""The one exception tree of sorap2p.

`SoraError` is the root. Errors are split the way h11 splits them:

* `LocalProtocolError`: *we* misused an API or tried to send something invalid.
* `RemoteProtocolError`: a *peer* sent something invalid (bad bytes, bad signature,
  oversized frame...). Code that handles network input catches exactly this one and
  turns it into a gossip REJECT or a peer-score penalty; it never crashes a node.

Other subclasses name local conditions that are neither (configuration, integrity of
data at rest, chain access).
"""

from __future__ import annotations


class SoraError(Exception):
    """Root of every error sorap2p raises on purpose."""


class LocalProtocolError(SoraError):
    """The local program misused an API (a bug on our side, or bad local input)."""


class RemoteProtocolError(SoraError):
    """A remote peer sent something that violates a sorap2p protocol."""


class ConfigError(SoraError):
    """A configuration value is wrong; the message names the key and what was expected."""


class IntegrityError(SoraError):
    """Data at rest or in flight does not match its content address or its MAC."""


class ChainError(SoraError):
    """The chain could not be reached or refused a transaction."""
