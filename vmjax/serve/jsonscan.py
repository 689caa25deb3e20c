"""A bounded JSON reader for request bodies: lists of numbers go to numpy as text, never to floats.

json.loads makes every number a Python float (24 bytes, plus 8 for its list slot), so a body of
short numbers grew about 13x in memory, and it recurses, so deep nesting raised RecursionError.
This reader walks the body token by token with a regular expression (no recursion, a depth
limit) and hands each flat list of numbers to numpy as one text slice; the caller, who knows
the schema, picks the dtype. Each regular-expression match and numpy call covers at most
`MAX_LIST_BYTES`, so none holds the GIL long enough to stall the event loop's other requests.

Accepted: RFC 8259 JSON plus NaN, Infinity and -Infinity (as Python's json writes them).
"""

from __future__ import annotations

import json
import re
import time
from typing import NamedTuple

import numpy as np

from vmjax.serve.errors import RequestError, past_deadline

MAX_DEPTH = 16  # nested lists and objects; a request needs 4 (list, video, frames, frame)
MAX_STRING_BYTES = 4096
# A flat list of numbers longer than either is read in runs, not as one token, and numpy
# never parses it: it is no feature list, and one long call would hold the GIL.
MAX_LIST_BYTES = 1 << 20
MAX_LIST_NUMBERS = 65536

_WS = rb"[ \t\n\r]*+"
_NUM = rb"(?:-?(?:0|[1-9][0-9]*+)(?:\.[0-9]++)?+(?:[eE][-+]?+[0-9]++)?+|NaN|-?Infinity)"
_MORE = rb"(?:" + _WS + rb"," + _WS + _NUM + rb")"  # `, number`
# A flat list of numbers, checked against JSON's grammar here (numpy also reads +1, .5, 01, nan).
_LIST = rb"\[" + _WS + rb"(?:" + _NUM + _MORE + rb"{0,%d}+)?+" % (MAX_LIST_NUMBERS - 1) + _WS
_RUN = _NUM + _MORE + rb"{0,%d}+" % (MAX_LIST_NUMBERS - 1)
_ALTERNATIVES = [
    rb"(?P<numbers>" + _LIST + rb"\])",  # one token
    rb'(?P<string>"[^"\\\x00-\x1f]*+(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})[^"\\\x00-\x1f]*+)*+")',
    # Numbers inside a list that is not one token (too long, or mixed) come as runs.
    rb"(?P<number>" + _RUN + rb")",
    rb"(?P<punct>[][{}:,])",
    rb"(?P<literal>true|false|null)",
    rb"(?P<end>\Z)",
]
_TOKEN = re.compile(_WS + rb"(?:" + b"|".join(_ALTERNATIVES) + rb")")
_SPACE = re.compile(_WS)
_SINGULAR = {"number": "a number", "string": "a string", "true": "a boolean", "false": "a boolean"}
_PLURAL = {"a number": "numbers", "a string": "strings", "a boolean": "booleans", "null": "nulls"}


class Token(NamedTuple):
    kind: str  # '[' ']' '{' '}' ':' ',' number numbers string true false null end
    start: int
    end: int


class JsonReader:
    """Tokens of one JSON body, front to back; errors are RequestErrors (400 syntax, 422 size).

    deadline: a time.monotonic() after which reading stops (the request has been answered
    503 by then; this ends the thread's work too).
    """

    def __init__(self, body: bytes, deadline: float | None = None):
        self.body = body
        self.deadline = deadline
        self.pos = 0
        self._tokens = 0

    def next(self) -> Token:
        self._tokens += 1
        if self.deadline is not None and self._tokens % 1024 == 0:
            if time.monotonic() > self.deadline:
                raise past_deadline("parsing JSON")
        m = _TOKEN.match(self.body, self.pos)
        if m is None:
            at = _SPACE.match(self.body, self.pos).end()
            raise self.syntax_error(f"unexpected {self._show(at, at + 12)}", at)
        kind = m.lastgroup
        start, end = m.start(kind), m.end()
        if kind == "numbers" and end - start > MAX_LIST_BYTES:
            kind, end = "[", start + 1
        elif kind == "punct":
            kind = chr(self.body[start])
        elif kind == "literal":
            kind = self.body[start:end].decode()
        elif kind == "string" and end - start - 2 > MAX_STRING_BYTES:
            raise RequestError(
                422,
                f"JSON body: a string of {end - start - 2} bytes at byte {start}; strings may "
                f"hold at most {MAX_STRING_BYTES}",
            )
        self.pos = end
        return Token(kind, start, end)

    def expect(self, kind: str, what: str) -> Token:
        tok = self.next()
        if tok.kind != kind:
            raise self.unexpected(tok, what)
        return tok

    def finish(self) -> None:
        """Checks that nothing but whitespace follows the value read."""
        tok = self.next()
        if tok.kind != "end":
            raise self.unexpected(tok, "the end of the body after the JSON value")

    def string(self, tok: Token) -> str:
        raw = self.body[tok.start : tok.end]
        try:
            if b"\\" not in raw:  # most keys and ids: no escapes to undo
                return raw[1:-1].decode("utf-8")
            s = json.loads(raw)
            s.encode("utf-8")  # a lone surrogate escape (\ud800) could not be answered back
        except (ValueError, UnicodeError):
            message = "a string that is not valid UTF-8 (or holds a lone surrogate)"
            raise self.syntax_error(message, tok.start) from None
        return s

    def numbers(self, tok: Token, dtype: np.dtype | type) -> np.ndarray:
        """The values of a `numbers` token."""
        start, end = tok.start + 1, tok.end - 1
        commas = self.body.count(b",", start, end)
        text = self.body[start:end]
        if commas == 0 and not text.strip(b" \t\n\r"):
            return np.zeros(0, dtype)
        try:
            x = np.fromstring(text, dtype, sep=",")
        except ValueError:
            x = None
        if x is None or len(x) != commas + 1:
            raise self.syntax_error("a list of numbers that does not parse", tok.start)
        return x

    def skip(self, tok: Token, depth: int, in_list: bool = False) -> str:
        """Reads the value that starts with `tok` (checking its syntax); says what it is.

        depth: how many lists and objects hold it; in_list: whether a list holds it (a run of
        numbers `1, 2` is then items, not a syntax error).
        """
        if tok.kind not in ("[", "{"):
            return self._scalar(tok, in_list)
        stack: list[str] = []
        kinds: set[str] = set()  # what the outermost container's items are
        while True:
            if tok.kind in ("[", "{"):  # a container opens
                if depth + len(stack) >= MAX_DEPTH:
                    raise self.syntax_error(f"nesting deeper than {MAX_DEPTH} levels", tok.start)
                if len(stack) == 1:
                    kinds.add("lists" if tok.kind == "[" else "objects")
                stack.append(tok.kind)
                tok = self.next()
                if tok.kind == ("]" if stack[-1] == "[" else "}"):
                    stack.pop()  # empty; the value is complete
                elif stack[-1] == "{":
                    tok = self._key_then_value(tok)
                    continue
                else:
                    continue
            else:
                what = self._scalar(tok, in_list=stack[-1] == "[")
                if len(stack) == 1:
                    kinds.add(_PLURAL.get(what, "lists"))
            while stack:  # a value ended: close containers until the next value starts
                close = "]" if stack[-1] == "[" else "}"
                tok = self.next()
                if tok.kind == close:
                    stack.pop()
                    continue
                if tok.kind != ",":
                    raise self.unexpected(tok, f"',' or '{close}'")
                tok = self.next()
                if stack[-1] == "{":
                    tok = self._key_then_value(tok)
                break
            else:
                if not kinds:
                    return "an empty list" if tok.kind == "]" else "an empty object"
                if tok.kind == "}":
                    return "an object"
                *most, last = sorted(kinds)
                return "a list of " + (f"{', '.join(most)} and {last}" if most else last)

    def _key_then_value(self, tok: Token) -> Token:
        if tok.kind != "string":
            raise self.unexpected(tok, "a key (a string)")
        self.expect(":", "':' after the key")
        return self.next()

    def _scalar(self, tok: Token, in_list: bool) -> str:
        if tok.kind == "numbers":
            n = len(self.numbers(tok, np.float32))  # parsed only to check its syntax
            return f"a list of {n} numbers" if n else "an empty list"
        if tok.kind == "number" and not in_list:
            comma = self.body.find(b",", tok.start, tok.end)
            if comma != -1:
                raise self.syntax_error("unexpected ','", comma)
        if tok.kind == "null":
            return "null"
        if tok.kind in _SINGULAR:
            return _SINGULAR[tok.kind]
        raise self.unexpected(tok, "a value")

    def unexpected(self, tok: Token, expected: str) -> RequestError:
        got = "the end of the body" if tok.kind == "end" else self._show(tok.start, tok.end)
        return self.syntax_error(f"expected {expected}, got {got}", tok.start)

    def _show(self, start: int, end: int) -> str:
        text = self.body[start : min(end, start + 24)].decode("utf-8", "backslashreplace")
        return repr(text if end - start <= 24 else text + "...")

    def syntax_error(self, message: str, at: int) -> RequestError:
        line = self.body.count(b"\n", 0, at) + 1
        column = at - (self.body.rfind(b"\n", 0, at) + 1) + 1
        return RequestError(
            400, f"malformed JSON body: {message} at byte {at} (line {line}, column {column})"
        )
