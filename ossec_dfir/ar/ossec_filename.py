"""Recover the alert's location and filename from OSSEC's execd argv.

How they reach the script (OSSEC 4.x source):

* analysisd (src/analysisd/alerts/exec.c) shell-escapes the filename with
  ``os_shell_escape`` (src/shared/string_op.c: a backslash before each
  character of OSSEC_SHELL_ESCAPES) and formats
  ``name user srcip alertid ruleid location filename`` with
  ``snprintf(msg, 1024, ...)``: at most 1023 bytes, the rest is cut. A response
  forwarded to an agent is first prefixed with
  ``[(local_source) ]location flags agent_id`` and cut at the same length.
  No filename is ``-`` (``(null)`` when forwarded to an agent).
* execd (src/os_execd/execd.c) splits the message on every single space into
  at most 29 fields after the name (MAX_ARGS 32); anything beyond is dropped.

So the filename is the last slots: rejoined (with the space that the split
removed) while the slot before ends with an odd number of backslashes, then
un-escaped. The location is the rest and is not escaped (an agent's location
``(web1) 10.0.0.5->/var/log/x`` takes two slots). This assumes the location
does not end with an odd number of backslashes (no OSSEC location does).

What cannot be read back unambiguously is refused, with the reason: a
backslash before a character OSSEC does not escape, a lone trailing backslash,
a character OSSEC escapes appearing unescaped, and any message that may have
been cut by analysisd or execd.
"""
from __future__ import annotations

# os_shell_escape's list, in its order (tests/ar/test_ossec_filename.py checks
# it against the C source).
OSSEC_SHELL_ESCAPES = "\\\"' \t;`><|#*[]{}&$!:()"
ANALYSISD_MSG_MAX = 1023          # snprintf(exec_msg, OS_SIZE_1024, ...)
EXECD_MAX_FIELDS = 29             # cmd_args[2..30] of execd's MAX_ARGS 32
NAME_SUFFIX_MAX = 10              # the response name is <command><timeout digits>
AGENT_ID_MAX = 16                 # "(null)" or the configured agent id
FORWARD_OVERHEAD = len("(local_source) ") + 1 + 3 + 1 + AGENT_ID_MAX + 1
NO_FILENAME = ("-", "(null)")


def _nbytes(text: str) -> int:
    try:
        return len(text.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:
        return len(text.encode("utf-8", "surrogatepass"))


def _odd_backslashes(text: str) -> bool:
    return (len(text) - len(text.rstrip("\\"))) % 2 == 1


def escape(text: str) -> str:
    """Escape text as OSSEC's os_shell_escape does (for the execd simulation)."""
    return "".join("\\" + c if c in OSSEC_SHELL_ESCAPES else c for c in text)


def unescape(text: str) -> str:
    """Undo os_shell_escape exactly; raise ValueError for text it cannot have written."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\":
            if i + 1 == len(text):
                raise ValueError("ends with a lone backslash")
            nxt = text[i + 1]
            if nxt not in OSSEC_SHELL_ESCAPES:
                raise ValueError(f"backslash before {nxt!r}, which OSSEC does not escape")
            out.append(nxt)
            i += 2
            continue
        if char in OSSEC_SHELL_ESCAPES:
            raise ValueError(f"unescaped {char!r}: not written by OSSEC's escaping")
        out.append(char)
        i += 1
    return "".join(out)


def may_be_cut(command: str, args: list[str], location: str | None) -> bool:
    """Return True when analysisd or execd may have cut this message.

    ``args`` is argv after argv[0] (``add``/``delete`` first). The length is
    estimated for the longest response name (command plus timeout digits) and
    for the forwarded form (the location repeated in the prefix), so a
    message is called cut from some bytes before the limit: never the reverse.
    """
    if len(args) - 1 >= EXECD_MAX_FIELDS:
        return True
    rest = sum(_nbytes(a) for a in args[1:]) + max(len(args) - 2, 0)
    estimate = (_nbytes(command) + NAME_SUFFIX_MAX + 1 + rest
                + _nbytes(location or "") + FORWARD_OVERHEAD)
    return estimate >= ANALYSISD_MSG_MAX


def split_extra(command: str, args: list[str]) -> tuple[str | None, str | None, str | None]:
    """Return (location, un-escaped filename, why the filename was dropped).

    ``args`` is argv after argv[0]; the slots after the rule id (args[5:]) are
    the location and the filename. One slot alone is a location. The filename
    is returned as analysisd had it, not yet validated as a path.
    """
    extra = args[5:]
    if not extra:
        return None, None, None
    if len(extra) == 1:
        return extra[0], None, None
    start = len(extra) - 1
    while start > 0 and _odd_backslashes(extra[start - 1]):
        start -= 1
    location = " ".join(extra[:start]) if start > 0 else None
    escaped = " ".join(extra[start:])
    if may_be_cut(command, args, location):
        return location, None, (f"the message may have been cut by OSSEC "
                                f"({ANALYSISD_MSG_MAX} bytes, {EXECD_MAX_FIELDS} fields)")
    if start == 0:
        return None, None, "no location slot before it, cannot tell where it starts"
    if escaped in NO_FILENAME:
        return location, None, None
    try:
        return location, unescape(escaped), None
    except ValueError as err:
        return location, None, f"not as OSSEC escapes it ({err})"
