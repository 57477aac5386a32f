"""Splitting an SQL script into statements the way `psql -f` does.

Why: the migration runner sends a file's statements one at a time, so that when one fails it
knows which — the server reports an error's character position only for some errors (a missing
table, a syntax error), never for others (a duplicate key, a failed check, a RAISE), and a
script's author needs a line number either way. Splitting follows psql's lexer, so any file
`psql -f` runs is split the same: `;` ends a statement except inside quotes ('…', E'…', "…",
$tag$…$tag$), comments (--, nested /* */), parentheses (multi-action rules), and the
BEGIN … END body of `CREATE [OR REPLACE] FUNCTION|PROCEDURE … BEGIN ATOMIC`.

Pure: no I/O. Neighbour: `pipelines.data.migrations`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Identifier characters: ASCII letters and `_` (digits and `$` after the first), and anything
# outside ASCII. Written as what they are not: a class spanning all of Unicode takes sre 10 ms
# to compile, on every start of the CLI.
_START = r"[^\x00-\x40\x5b-\x5e\x60\x7b-\x7f]"
_WORD = re.compile(_START + r"[^\x00-\x23\x25-\x2f\x3a-\x40\x5b-\x5e\x60\x7b-\x7f]*")
_DOLLAR = re.compile(r"\$(?:" + _START + r"[^\x00-\x2f\x3a-\x40\x5b-\x5e\x60\x7b-\x7f]*)?\$")
_ROUTINE_HEADS = (("create", "function"), ("create", "procedure"),
                  ("create", "or", "replace", "function"),
                  ("create", "or", "replace", "procedure"))


class ScriptError(ValueError):
    """The script cannot be split: an unterminated quote or comment. `line` is where it opens."""

    def __init__(self, message: str, *, line: int) -> None:
        super().__init__(f"line {line}: {message}")
        self.message = message
        self.line = line


@dataclass(frozen=True)
class Statement:
    text: str  # as written, from just after the previous `;` through its own `;`
    offset: int  # index of text[0] in the script
    start: int  # index in the script of its first character that is not space or comment
    words: tuple[str, ...]  # its first few keywords outside parentheses, lower-cased

    @property
    def snippet(self) -> str:
        """Its first line, shortened: enough to recognise it in a message."""
        first = self.text[self.start - self.offset:].split("\n", 1)[0].strip()
        return first if len(first) <= 60 else first[:57] + "..."


def line_of(script: str, index: int) -> int:
    """1-based line number of character `index` of `script`."""
    return script.count("\n", 0, max(index, 0)) + 1


def split(script: str) -> list[Statement]:
    """The statements of `script`, in order; parts holding only space and comments are left
    out. Raises ScriptError for an unterminated quoted string, identifier or comment."""
    out: list[Statement] = []
    i, begin = 0, 0
    start: int | None = None
    words: list[str] = []
    parens = 0
    block = 0  # depth of BEGIN … END inside a CREATE FUNCTION/PROCEDURE … BEGIN ATOMIC
    while i < len(script):
        kind, end, word = _token(script, i)
        if kind == "space":
            i = end
            continue
        if kind == ";" and parens == 0 and block == 0:
            if start is not None:  # a bare `;` is no statement (and asyncpg rejects it)
                out.append(Statement(script[begin:end], begin, start, tuple(words)))
            begin, start, words = end, None, []
            i = end
            continue
        if start is None:
            start = i
        if kind == "(":
            parens += 1
        elif kind == ")":
            parens = max(parens - 1, 0)
        elif kind == "word" and parens == 0:
            if len(words) < 4:
                words.append(word)
            if _is_routine(words):
                block = _track_block(word, block)
        i = end
    if start is not None:
        out.append(Statement(script[begin:], begin, start, tuple(words)))
    return out


def _token(script: str, i: int) -> tuple[str, int, str]:
    """The token at `i`: its kind (space — comments too —, `;`, `(`, `)`, word, other), the
    index just past it, and for a word its lower-cased text."""
    c = script[i]
    if c in " \t\r\n\f\v":
        return "space", i + 1, ""
    if script.startswith("--", i):
        eol = script.find("\n", i)
        return "space", len(script) if eol < 0 else eol + 1, ""
    if script.startswith("/*", i):
        return "space", _skip_comment(script, i), ""
    if c in ";()":
        return c, i + 1, ""
    if c in "'\"":
        return "other", _skip_quoted(script, i, c, backslash=False), ""
    if c == "$" and (m := _DOLLAR.match(script, i)):
        close = script.find(m.group(), m.end())
        if close < 0:
            raise ScriptError("unterminated dollar-quoted string", line=line_of(script, i))
        return "other", close + len(m.group()), ""
    if m := _WORD.match(script, i):
        word = m.group().lower()
        if word == "e" and script.startswith("'", m.end()):  # E'…': backslash escapes
            return "other", _skip_quoted(script, m.end(), "'", backslash=True), ""
        return "word", m.end(), word
    if c.isdigit():  # a number, consumed whole so that `1$a$` opens no quote
        j = i + 1
        while j < len(script) and (script[j].isalnum() or script[j] in "_$."):
            j += 1
        return "other", j, ""
    return "other", i + 1, ""


def _is_routine(words: list[str]) -> bool:
    return any(tuple(words[:len(head)]) == head for head in _ROUTINE_HEADS)


def _track_block(word: str, depth: int) -> int:
    """psql's rule: BEGIN opens a block, CASE too when already inside one, END closes."""
    if word == "begin":
        return depth + 1
    if word == "case" and depth >= 1:
        return depth + 1
    if word == "end" and depth > 0:
        return depth - 1
    return depth


def _skip_comment(script: str, i: int) -> int:
    depth, j = 0, i
    while j < len(script):
        if script.startswith("/*", j):
            depth, j = depth + 1, j + 2
        elif script.startswith("*/", j):
            depth, j = depth - 1, j + 2
            if depth == 0:
                return j
        else:
            j += 1
    raise ScriptError("unterminated /* comment", line=line_of(script, i))


def _skip_quoted(script: str, i: int, quote: str, *, backslash: bool) -> int:
    """Index just past the quoted text opening at `i`; a doubled quote is part of it."""
    j = i + 1
    while j < len(script):
        c = script[j]
        if backslash and c == "\\":
            j += 2
        elif c == quote:
            if script.startswith(quote, j + 1):
                j += 2
            else:
                return j + 1
        else:
            j += 1
    what = "quoted identifier" if quote == '"' else "quoted string"
    raise ScriptError(f"unterminated {what}", line=line_of(script, i))
