"""Text -> statements: the lark grammar, semantic checks, and errors in human words.

Every error is a :class:`SqlError` whose message says what was expected, after
what, and where (``at line L, column C``); ``context`` carries ``position``
(0-based offset into the text), ``line`` and ``column`` (1-based).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources
from typing import NoReturn
from urllib.parse import urlsplit

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from .._errors import SqlError
from .._event import OperationType
from .._names import name_problem
from ._ast import (
    AlterAction,
    AlterStream,
    CreateStream,
    DestinationType,
    DropStream,
    ShowStreams,
    ShowStreamStatus,
    Statement,
)

DESTINATIONS: tuple[DestinationType, ...] = ("kafka", "kinesis", "webhook")
OPERATIONS = tuple(m.value for m in OperationType if m.name.isupper())


@functools.cache
def grammar_parser() -> Lark:
    """The LALR parser, built once per process."""
    text = resources.files(__package__).joinpath("grammar.lark").read_text(encoding="utf-8")
    return Lark(text, parser="lalr", lexer="contextual", propagate_positions=True)


# -- a small tokenizer: statement splitting and error context -------------------------


@dataclass(frozen=True)
class _Tok:
    kind: str  # 'string' | 'qident' | 'word' | 'punct' | 'other'
    text: str
    start: int
    end: int


_TOKEN_RE = re.compile(
    r"""(?P<ws>\s+)
      | (?P<comment>--[^\n]*|/\*[\s\S]*?(?:\*/|\Z))
      | (?P<string>'(?:[^']|'')*'?)
      | (?P<qident>"(?:[^"]|"")*"?)
      | (?P<word>[A-Za-z_][A-Za-z0-9_$]*)
      | (?P<punct>[;,().*])
      | (?P<other>.)""",
    re.VERBOSE | re.DOTALL,
)


def _tokens(text: str) -> list[_Tok]:
    out: list[_Tok] = []
    for m in _TOKEN_RE.finditer(text):
        kind = m.lastgroup or "other"
        if kind not in ("ws", "comment"):
            out.append(_Tok(kind, m.group(), m.start(), m.end()))
    return out


def split_statements(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` offsets of each non-empty statement of ``text``.

    Statements are separated by ``;`` outside strings, quoted names and comments;
    a span includes its terminating ``;``. Empty statements are skipped.
    """
    spans: list[tuple[int, int]] = []
    start = 0
    seen = False
    for tok in _tokens(text):
        if tok.text == ";" and tok.kind == "punct":
            if seen:
                spans.append((start, tok.end))
            start, seen = tok.end, False
        else:
            seen = True
    if seen:
        spans.append((start, len(text)))
    return spans


def is_complete(text: str) -> bool:
    """True when ``text`` has something in it and ends with ``;`` (comments aside)."""
    toks = _tokens(text)
    return bool(toks) and toks[-1].kind == "punct" and toks[-1].text == ";"


# -- errors ----------------------------------------------------------------------------


def _line_col(text: str, pos: int) -> tuple[int, int]:
    line = text.count("\n", 0, pos) + 1
    return line, pos - (text.rfind("\n", 0, pos) + 1) + 1


def _fail(text: str, pos: int, message: str, detail: str = "") -> NoReturn:
    line, col = _line_col(text, pos)
    raise SqlError(f"{message} at line {line}, column {col}{detail}", position=pos, line=line, column=col)


_KEYWORD_ORDER = [
    "CREATE",
    "SHOW",
    "ALTER",
    "DROP",
    "CHANGE",
    "DATA",
    "CAPTURE",
    "ON",
    "TO",
    "CDC",
    "STREAMS",
    "STREAM",
    "STATUS",
    "IF",
    "EXISTS",
    "TOPIC",
    "REGION",
    "FORMAT",
    "SECRET",
    "SNAPSHOT",
    "OPERATIONS",
    "WHERE",
    "AS",
    "JSON",
    "AVRO",
    "INITIAL",
    "NONE",
    "PAUSE",
    "RESUME",
    "BACKFILL",
    "CANCEL",
]
_KEYWORDS = {*_KEYWORD_ORDER, "KAFKA", "KINESIS", "WEBHOOK"}
_PUNCT = {
    "COMMA": "','",
    "DOT": "'.'",
    "STAR": "'*'",
    "LPAR": "'('",
    "RPAR": "')'",
    "SEMICOLON": "';'",
}
_DEST_TITLE = {"KAFKA": "Kafka", "KINESIS": "Kinesis", "WEBHOOK": "webhook"}
_STRING_AFTER = {
    "KAFKA": ("the Kafka address", "the Kafka address in quotes, e.g. 'localhost:9092'"),
    "KINESIS": ("the Kinesis stream name", "the Kinesis stream name in quotes"),
    "WEBHOOK": ("the webhook URL", "the webhook URL in quotes, e.g. 'https://example.com/hook'"),
    "TOPIC": ("the topic", "the topic name in quotes"),
    "REGION": ("the region", "the AWS region in quotes, e.g. 'us-east-1'"),
    "SECRET": ("the secret", "the secret in quotes"),
    "WHERE": ("the predicate", "the predicate in quotes, e.g. WHERE 'total > 1000'"),
    "AS": ("the stream name", "the stream name"),
}


def _join(words: list[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " or " + words[-1]


def _describe_prev(toks: list[_Tok]) -> str | None:
    """'after ...' words for the last token before an error."""
    if not toks:
        return None
    last = toks[-1]
    before = toks[-2].text.upper() if len(toks) > 1 else ""
    if last.kind == "string":
        return _STRING_AFTER.get(before, ("the string " + _short(last.text), ""))[0]
    if last.kind == "word" and last.text.upper() in _KEYWORDS and before != "TO":
        return last.text.upper()
    if last.kind == "word" and before == "TO":
        return f"the destination type {last.text.upper()}"
    if last.kind == "punct":
        return f"'{last.text}'"
    return _short(last.text) if last.kind != "word" else last.text


def _short(s: str) -> str:
    return s if len(s) <= 40 else s[:37] + "..."


def _describe_expected(expected: set[str], toks: list[_Tok]) -> str:
    expected = {e.lstrip("_") or e for e in expected}
    last = toks[-1] if toks else None
    prev = last.text.upper() if last else ""
    names = {"IDENT", "QUOTED_IDENT"}
    if prev == "CAPTURE" and "IF" in expected:
        return "a stream name or IF EXISTS"
    if expected == {"STRING"}:
        return _STRING_AFTER.get(prev, ("", "a quoted string"))[1]
    if expected & names and not expected - names - {"STRING", "STAR"}:
        if prev == "TO":
            return "a destination type (KAFKA, KINESIS or WEBHOOK)"
        if prev == "AS":
            return "the stream name (a quoted string or a name)"
        if prev in ("STREAM", "STATUS", "CAPTURE", "EXISTS"):
            return "a stream name"
        if prev == "." or "STAR" in expected:
            return "a table name or *"
        if prev in ("(", ",") and any(t.text.upper() == "OPERATIONS" for t in toks):
            return f"an operation ({_join(list(OPERATIONS[:4]))})"
        if prev in ("ON", ","):
            return "a table name"
        return "a name"
    # an option list: only the options that fit the destination and are not given yet
    words = [t.text.upper() for t in toks]
    if "TO" in words:
        after_to = words[len(words) - 1 - words[::-1].index("TO") :]
        dest = after_to[1] if len(after_to) > 1 else ""
        if "TOPIC" in expected and dest in _DEST_TITLE:
            drop = {"KAFKA": {"REGION"}, "KINESIS": {"TOPIC"}, "WEBHOOK": {"TOPIC", "REGION"}}
            expected = expected - drop[dest] - set(after_to[2:])
    out = [k for k in _KEYWORD_ORDER if k in expected]
    if expected & names:
        out.append("a name")
    if "STRING" in expected:
        out.append("a quoted string")
    out += [w for t, w in _PUNCT.items() if t in expected]
    if "$END" in expected:
        out.append("end of input")
    out += sorted(
        e
        for e in expected
        if e not in _KEYWORDS and e not in _PUNCT and e not in {"IDENT", "QUOTED_IDENT", "STRING", "$END"}
    )
    return _join(out) or "something else"


def _syntax_error(text: str, exc: UnexpectedInput) -> NoReturn:
    pos = exc.pos_in_stream if exc.pos_in_stream is not None else len(text)
    if (isinstance(exc, UnexpectedToken) and exc.token.type == "$END") or isinstance(exc, UnexpectedEOF):
        pos = len(text.rstrip())
    # the statement the error is in, for context
    before = _tokens(text[:pos])
    stmt_start = max((i + 1 for i, t in enumerate(before) if t.text == ";"), default=0)
    ctx = before[stmt_start:]
    if isinstance(exc, UnexpectedCharacters):
        ch = text[pos] if pos < len(text) else ""
        if ch == "'":
            _fail(text, pos, "unterminated string (close it with ')")
        if ch == '"':
            _fail(text, pos, 'unterminated or empty quoted name (close it with ")')
        word = re.match(r"[A-Za-z_][A-Za-z0-9_$]*", text[pos:])
        _expected_at(text, pos, set(exc.allowed or ()), ctx, f"'{_short(word[0] if word else ch)}'")
    assert isinstance(exc, UnexpectedToken | UnexpectedEOF)
    accepted: set[str] = set(exc.expected)
    if isinstance(exc, UnexpectedToken) and exc.interactive_parser is not None:
        # LALR merges lookaheads of states with one core; accepts() is exact
        accepted = set(exc.interactive_parser.accepts()) or accepted  # type: ignore[no-untyped-call]
    if isinstance(exc, UnexpectedToken) and exc.token.type != "$END":
        found = exc.token.value
        found_s = _short(found) if found.startswith(("'", '"')) else f"'{_short(found)}'"
    else:
        found_s = "end of input"
    _expected_at(text, pos, accepted, ctx, found_s)


def _expected_at(text: str, pos: int, accepted: set[str], ctx: list[_Tok], found: str) -> NoReturn:
    expected = _describe_expected(accepted, ctx)
    after = _describe_prev(ctx)
    line, col = _line_col(text, pos)
    raise SqlError(
        f"expected {expected}"
        + (f" after {after}" if after else "")
        + f" at line {line}, column {col}, found {found}",
        position=pos,
        line=line,
        column=col,
    )


# -- tree -> statements ------------------------------------------------------------------


def _string(tok: Token) -> str:
    return str(tok)[1:-1].replace("''", "'")


def _name(tree: Tree[Token]) -> str:
    tok = tree.children[0]
    assert isinstance(tok, Token)
    if tok.type == "QUOTED_IDENT":
        return str(tok)[1:-1].replace('""', '"')
    return str(tok).lower()


class _Builder:
    def __init__(self, text: str) -> None:
        self.text = text

    def at(self, node: Token | Tree[Token], message: str, detail: str = "") -> NoReturn:
        pos = node.start_pos if isinstance(node, Token) else node.meta.start_pos
        _fail(self.text, pos or 0, message, detail)

    def statement(self, tree: Tree[Token]) -> Statement:
        kind = tree.data
        if kind == "create":
            return self.create(tree)
        if kind == "show_streams":
            return ShowStreams()
        if kind == "show_status":
            return ShowStreamStatus(self.stream_name(tree.children[0]))
        if kind == "alter":
            name_t, action_t = tree.children
            assert isinstance(action_t, Tree)
            action: AlterAction = action_t.data  # type: ignore[assignment]
            where = None
            if action_t.children:
                tok = action_t.children[0]
                assert isinstance(tok, Token)
                where = self.predicate(tok)
            return AlterStream(self.stream_name(name_t), action, where)
        if kind == "drop":
            if_exists = len(tree.children) == 2
            return DropStream(self.stream_name(tree.children[-1]), if_exists)
        raise AssertionError(kind)  # pragma: no cover

    def stream_name(self, node: Token | Tree[Token]) -> str:
        if isinstance(node, Token):
            assert node.type == "STRING"
            name = _string(node)
        else:
            name = _name(node)
        problem = name_problem(name)  # the one naming rule (REST, YAML, Python API too)
        if problem is not None:
            self.at(node, problem)
        return name

    def predicate(self, tok: Token) -> str:
        pred = _string(tok)
        if not pred.strip():
            self.at(tok, "the WHERE predicate must not be empty")
        return pred

    def table(self, tree: Tree[Token]) -> str:
        parts: list[str] = []
        for child in tree.children:
            if isinstance(child, Token):  # STAR
                parts.append("*")
                continue
            name = _name(child)
            tok = child.children[0]
            assert isinstance(tok, Token)
            if tok.type == "QUOTED_IDENT" and any(c in name for c in ".*?"):
                self.at(child, "quoted table names containing '.', '*' or '?' are not supported")
            parts.append(name)
        return ".".join(parts)

    def create(self, tree: Tree[Token]) -> CreateStream:
        tables: list[str] = []
        seen_tables: dict[str, Tree[Token]] = {}
        opts: dict[str, Tree[Token]] = {}
        dest_tree: Tree[Token] | None = None
        address_tok: Token | None = None
        as_tree: Tree[Token] | None = None
        for child in tree.children:
            if isinstance(child, Token):
                address_tok = child
            elif child.data == "table":
                t = self.table(child)
                if t in seen_tables:
                    self.at(child, f"table {t} is listed twice")
                seen_tables[t] = child
                tables.append(t)
            elif child.data == "dest_type":
                dest_tree = child
            elif child.data == "as_name":
                as_tree = child
            else:
                key = child.data.removeprefix("opt_").upper()
                if key in opts:
                    first = opts[key].meta
                    self.at(
                        child,
                        f"duplicate option {key}",
                        f" (already given at line {first.line}, column {first.column});"
                        " give each option at most once",
                    )
                opts[key] = child
        assert dest_tree is not None and address_tok is not None

        dest_tok = dest_tree.children[0]
        assert isinstance(dest_tok, Token)
        dest = str(dest_tok).lower()
        if dest not in DESTINATIONS:
            self.at(
                dest_tok,
                f"unknown destination type {str(dest_tok).upper()}",
                ": expected KAFKA, KINESIS or WEBHOOK",
            )
        title = _DEST_TITLE[dest.upper()]
        address = _string(address_tok)
        if not address.strip():
            self.at(address_tok, f"the {title} address must not be empty")

        def missing(keyword: str, why: str) -> NoReturn:
            assert address_tok is not None
            nxt = [t for t in _tokens(self.text[address_tok.end_pos or 0 :])]
            pos = (address_tok.end_pos or 0) + (nxt[0].start if nxt else 0)
            _fail(
                self.text,
                pos,
                f"expected {keyword} after {_STRING_AFTER[dest.upper()][0]}",
                f": {why}",
            )

        def value(key: str) -> str | None:
            node = opts.get(key)
            if node is None:
                return None
            tok = node.children[0]
            assert isinstance(tok, Token)
            return _string(tok) if tok.type == "STRING" else str(tok).lower()

        topic, region = value("TOPIC"), value("REGION")
        fmt = value("FORMAT") or "json"
        if dest == "kafka":
            if topic is None:
                missing("TOPIC", "a Kafka stream needs TOPIC 'topic-name'")
            if region is not None:
                self.at(opts["REGION"], "REGION is for Kinesis; a Kafka stream takes TOPIC")
        elif dest == "kinesis":
            if region is None:
                missing("REGION", "a Kinesis stream needs REGION 'aws-region'")
            if topic is not None:
                self.at(
                    opts["TOPIC"],
                    "TOPIC is for Kafka; a Kinesis stream is named by its address",
                )
        else:
            for key in ("TOPIC", "REGION"):
                if key in opts:
                    self.at(
                        opts[key],
                        f"{key} does not apply to a webhook; the URL is the whole address",
                    )
            parts = urlsplit(address)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                self.at(
                    address_tok,
                    f"the webhook URL {address!r} is not an http(s) URL with a host",
                )
            if fmt == "avro":
                self.at(opts["FORMAT"], "FORMAT AVRO is for Kafka and Kinesis; webhooks receive JSON")
        for key in ("TOPIC", "REGION", "SECRET"):
            v = value(key)
            if v is not None and not v.strip():
                self.at(opts[key], f"{key} must not be empty")

        operations: list[str] = []
        if "OPERATIONS" in opts:
            for op_tree in opts["OPERATIONS"].children:
                assert isinstance(op_tree, Tree)
                tok = op_tree.children[0]
                assert isinstance(tok, Token)
                try:
                    op = OperationType.parse(str(tok)).value
                except ValueError:
                    self.at(
                        tok,
                        f"unknown operation {str(tok)!r}",
                        f": expected {_join(list(OPERATIONS))}",
                    )
                if op in operations:
                    self.at(tok, f"operation {op} is listed twice")
                operations.append(op)

        where = None
        if "WHERE" in opts:
            tok = opts["WHERE"].children[0]
            assert isinstance(tok, Token)
            where = self.predicate(tok)

        name = None
        if as_tree is not None:
            node = as_tree.children[0]
            assert isinstance(node, Token | Tree)
            name = self.stream_name(node)

        return CreateStream(
            tables=tuple(tables),
            destination=dest,
            address=address,
            topic=topic,
            region=region,
            format=fmt,  # type: ignore[arg-type]
            secret=value("SECRET"),
            snapshot=value("SNAPSHOT") or "none",  # type: ignore[arg-type]
            operations=tuple(operations),
            where=where,
            name=name,
        )


def _parse_masked(text: str) -> list[Statement]:
    try:
        tree = grammar_parser().parse(text)
    except UnexpectedInput as exc:
        _syntax_error(text, exc)
    builder = _Builder(text)
    out: list[Statement] = []
    for child in tree.children:
        assert isinstance(child, Tree)
        out.append(builder.statement(child))
    return out


def parse(text: str) -> list[Statement]:
    """Parse one or more statements separated by ``;`` (the last ``;`` is optional).

    Raises :class:`SqlError` on the first syntax or semantic error, or
    ``SqlError("empty statement")`` when there is no statement at all.
    """
    if not split_statements(text):
        raise SqlError("empty statement")
    return _parse_masked(text)


def parse_one(text: str, start: int = 0, end: int | None = None) -> Statement:
    """Parse the single statement at ``text[start:end]``; error positions, lines and
    columns are those in the whole ``text``."""
    end = len(text) if end is None else end
    masked = re.sub(r"[^\n]", " ", text[:start]) + text[start:end]
    stmts = _parse_masked(masked)
    if len(stmts) != 1:
        raise SqlError("empty statement" if not stmts else "expected a single statement")
    return stmts[0]
