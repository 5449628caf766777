"""Listener endpoints: the descriptions in ``[listeners]``, parsed as Twisted endpoints.

Parsing binds nothing, so start-up (and ``osp-admin config check``) checks every
description before it creates anything, and a bad one stops it with one line naming
the key.
"""

from __future__ import annotations

from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IStreamServerEndpoint

from osp_server.config import Config
from osp_server.reactor import IOSPReactor


class StartupError(Exception):
    """Start-up cannot continue; the message says what the operator must fix."""


def endpoint_for(
    config: Config, reactor: IOSPReactor, name: str, description: str
) -> IStreamServerEndpoint:
    """The endpoint of listener ``name``; a description Twisted cannot parse is a
    :class:`StartupError` naming the key."""
    key = f"{config.source}: listeners.{name.replace('-', '_')}"
    try:
        endpoint: IStreamServerEndpoint = serverFromString(reactor, description)
        return endpoint
    except (IndexError, KeyError) as e:
        if _is_systemd(description):
            # Twisted says only "list index out of range" (or the missing name).
            raise StartupError(
                f"{key}: {description!r}: systemd passed no such socket ({e}); start "
                "the service through its socket unit (LISTEN_FDS, LISTEN_FDNAMES)"
            ) from None
        raise StartupError(f"{key}: bad endpoint description {description!r}: {e}") from None
    except Exception as e:  # any parser error names a bad description
        raise StartupError(f"{key}: bad endpoint description {description!r}: {e}") from None


def listener_descriptions(config: Config) -> list[tuple[str, str]]:
    """(listener name, endpoint description) of every configured listener."""
    cfg = config.listeners
    named = (
        ("http", cfg.http),
        ("https", cfg.https),
        ("osp-mtls", cfg.osp_mtls),
        ("legacy-osp", cfg.legacy_osp),
        ("metrics", cfg.metrics),
    )
    return [(name, description) for name, description in named if description]


def check_endpoints(config: Config, reactor: IOSPReactor, *, systemd: bool = True) -> None:
    """:class:`StartupError` naming the key when a listener's endpoint description
    does not parse (parsing binds nothing).  ``systemd=False`` skips ``systemd:``
    descriptions, which only parse under systemd (with the sockets it passes)."""
    for name, description in listener_descriptions(config):
        if systemd or not _is_systemd(description):
            endpoint_for(config, reactor, name, description)


def _is_systemd(description: str) -> bool:
    """A socket systemd passes (``systemd:...``), which exists only under systemd."""
    return description.strip().lower().startswith("systemd:")
