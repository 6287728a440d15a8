"""Text shown to people: user text escaped for a terminal, URLs without their passwords.

Session names, user ids, tags, end reasons and span names come from the program's users. Printed
raw, an ESC or OSC sequence in one of them changes the window title, clears the screen or forges
a line of output. Every CLI and console line passes such text through `printable` first.
"""

from __future__ import annotations

import re
import urllib.parse


def printable(text: object) -> str:
    """`text` with every non-printable character (C0/C1 controls, DEL, line and paragraph
    separators, bidirectional overrides, ...) written as a Python escape (``\\x1b``, ``\\n``,
    ``\\u202e``); printable text, non-ASCII letters included, is left as it is."""
    value = text if isinstance(text, str) else str(text)
    if value.isprintable():
        return value
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in value)


def _escape(ch: str) -> str:
    code = ord(ch)
    if ch == "\n":
        return "\\n"
    if ch == "\r":
        return "\\r"
    if ch == "\t":
        return "\\t"
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


_USERINFO_PASSWORD = re.compile(r"(//[^/?#@:]*:)[^/?#]*@")


def mask_url(text: str) -> str:
    """Hide a password in a URL's user info (``https://user:***@host``)."""
    try:
        parts = urllib.parse.urlsplit(text)
    except ValueError:  # malformed (e.g. a bad IPv6 host): mask what looks like user:password@
        return _USERINFO_PASSWORD.sub(r"\1***@", text)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return text
