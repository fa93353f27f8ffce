"""The README's examples of names filled from arguments and of async code run as written."""

import asyncio
import os
import re
import sys
import warnings

import pytest

from marathon import Lock

pytestmark = pytest.mark.django_db(transaction=True)

README = os.path.join(
    os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "README.rst"
)


def example(section):
    """The first literal block (after '::') of the README section titled `section`."""
    with open(README, encoding="utf-8") as file:
        text = file.read()
    body = re.search(
        r"^%s\n-+\n(.*?)(?=^\S[^\n]*\n[-=]+\n)" % re.escape(section), text, re.S | re.M
    ).group(1)
    block = re.search(r"::\n\n((?:    .*\n|\n)+)", body).group(1)
    return "\n".join(line[4:] for line in block.splitlines())


def test_a_lock_per_argument(capsys):
    exec(
        compile(example("A lock per argument"), "README: A lock per argument", "exec"),
        {},
    )
    assert capsys.readouterr().out == "Syncing shop 1\n"
    assert not Lock.objects.exists()


@pytest.mark.skipif(
    sys.version_info < (3, 7), reason="the example uses asyncio.run (Python 3.7+)"
)
def test_async_code(capsys):
    # Django 3.1's async_unsafe calls asyncio.get_event_loop(), which on Python
    # < 3.10 makes a default loop; asyncio.run() replaces it without closing
    # it, and its sockets would be reported unclosed in some later test.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            default = asyncio.get_event_loop()
        except RuntimeError:
            default = None
    exec(compile(example("Async code"), "README: Async code", "exec"), {})
    if default is not None:
        default.close()
    assert re.fullmatch(r"fence \d+\n", capsys.readouterr().out)
    assert not Lock.objects.exists()
