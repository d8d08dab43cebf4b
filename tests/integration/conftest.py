"""Dovecot fixtures: one throwaway IMAP server for the session, a fresh mailbox per test."""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Iterator
from typing import NoReturn

import pytest

from tests.dovecot import Dovecot, DovecotUnavailable, User

_users = itertools.count(1)


def _unavailable(reason: str) -> NoReturn:
    """CI must run the IMAP tests; a developer without Dovecot is told why they were skipped."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"dovecot: {reason}", pytrace=False)
    pytest.skip(f"dovecot: {reason}")


def _started() -> Dovecot:
    try:
        server = Dovecot()
        server.start()
    except (DovecotUnavailable, OSError, subprocess.CalledProcessError) as error:
        _unavailable(str(error))
    return server


@pytest.fixture(scope="session")
def dovecot() -> Iterator[Dovecot]:
    server = _started()
    yield server
    server.remove()


@pytest.fixture
def private_dovecot() -> Iterator[Dovecot]:
    """A server of the test's own, for tests that stop it."""
    server = _started()
    yield server
    server.remove()


@pytest.fixture
def mailbox_user(dovecot: Dovecot) -> User:
    """A new user with an empty mailbox, so tests never see each other's mail."""
    if not dovecot.running:
        dovecot.start()
    return dovecot.add_user(f"buyer{next(_users)}-{os.getpid()}", "s3cret-pass")
