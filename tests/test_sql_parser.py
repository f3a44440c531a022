"""The SQL grammar and parser: the guide's statements, syntax details, and errors."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from heliosdb_cdc._errors import SqlError
from heliosdb_cdc._event import OperationType
from heliosdb_cdc.sql import (
    AlterStream,
    CreateStream,
    DropStream,
    ShowStreams,
    ShowStreamStatus,
    grammar_parser,
    is_complete,
    parse,
    parse_one,
    split_statements,
)

# -- the guide's statements, exactly as written ---------------------------------------------

GUIDE_QUICK_START = """\
-- Create a simple CDC stream
CREATE CHANGE DATA CAPTURE ON orders
TO KAFKA 'localhost:9092' TOPIC 'orders-events'
FORMAT JSON;
-- Verify the stream
SHOW CDC STREAMS;"""

GUIDE_KAFKA = """\
CREATE CHANGE DATA CAPTURE ON users
TO KAFKA 'kafka.example.com:9092' TOPIC 'user-events'
FORMAT JSON
AS 'users_stream';"""

GUIDE_KINESIS = """\
CREATE CHANGE DATA CAPTURE ON transactions
TO KINESIS 'transactions-stream' REGION 'us-east-1'
FORMAT AVRO;"""

GUIDE_MANAGING = """\
-- List all streams
SHOW CDC STREAMS;
-- View stream details
SHOW CDC STREAM STATUS users_stream;
-- Pause a stream
ALTER CDC STREAM users_stream PAUSE;
-- Resume a stream
ALTER CDC STREAM users_stream RESUME;
-- Drop a stream
DROP CHANGE DATA CAPTURE users_stream;"""


def test_guide_quick_start() -> None:
    assert parse(GUIDE_QUICK_START) == [
        CreateStream(
            tables=("orders",),
            destination="kafka",
            address="localhost:9092",
            topic="orders-events",
            format="json",
        ),
        ShowStreams(),
    ]


def test_guide_kafka_destination() -> None:
    (stmt,) = parse(GUIDE_KAFKA)
    assert stmt == CreateStream(
        tables=("users",),
        destination="kafka",
        address="kafka.example.com:9092",
        topic="user-events",
        name="users_stream",
    )
    assert isinstance(stmt, CreateStream)
    cfg = stmt.to_config()
    assert cfg.name == "users_stream"
    assert cfg.tables == ["users"]
    assert cfg.destination.type == "kafka"
    assert cfg.destination.address == "kafka.example.com:9092"
    assert cfg.destination.topic == "user-events"
    assert cfg.format == "json"


def test_guide_kinesis_destination() -> None:
    (stmt,) = parse(GUIDE_KINESIS)
    assert stmt == CreateStream(
        tables=("transactions",),
        destination="kinesis",
        address="transactions-stream",
        region="us-east-1",
        format="avro",
    )
    assert isinstance(stmt, CreateStream)
    assert stmt.base_name() == "transactions_kinesis"
    cfg = stmt.to_config()
    assert cfg.name == "transactions_kinesis"
    assert (cfg.destination.type, cfg.destination.region, cfg.format) == (
        "kinesis",
        "us-east-1",
        "avro",
    )


def test_guide_managing_streams() -> None:
    assert parse(GUIDE_MANAGING) == [
        ShowStreams(),
        ShowStreamStatus("users_stream"),
        AlterStream("users_stream", "pause"),
        AlterStream("users_stream", "resume"),
        DropStream("users_stream"),
    ]


def test_guide_basic_syntax_shape() -> None:
    # "TO destination_type 'address' [TOPIC 'topic_name'] [FORMAT JSON|AVRO] [AS 'stream_name']"
    (stmt,) = parse(
        "CREATE CHANGE DATA CAPTURE ON table_name TO KAFKA 'address' TOPIC 'topic_name' "
        "FORMAT AVRO AS 'stream_name';"
    )
    assert stmt == CreateStream(
        tables=("table_name",),
        destination="kafka",
        address="address",
        topic="topic_name",
        format="avro",
        name="stream_name",
    )


# -- syntax details -------------------------------------------------------------------------


def test_keywords_are_case_insensitive() -> None:
    lower = parse(GUIDE_KAFKA.lower())
    mixed = parse(
        "Create Change Data Capture oN users to Kafka 'kafka.example.com:9092' "
        "ToPiC 'user-events' format json As 'users_stream'"
    )
    assert lower == mixed == parse(GUIDE_KAFKA)
    assert parse("show cdc streams") == [ShowStreams()]
    assert parse("alter CDC stream x Backfill wHeRe 'id > 1'") == [AlterStream("x", "backfill", "id > 1")]


def test_strings_escape_quotes_and_keep_case() -> None:
    (stmt,) = parse(
        "CREATE CHANGE DATA CAPTURE ON t TO WEBHOOK 'https://Example.com/Hook?a=1;b=2' "
        "SECRET 'it''s -- not a comment; really' WHERE 'name = ''O''''Brien''' AS 'My ''Stream'''"
    )
    assert isinstance(stmt, CreateStream)
    assert stmt.address == "https://Example.com/Hook?a=1;b=2"
    assert stmt.secret == "it's -- not a comment; really"
    assert stmt.where == "name = 'O''Brien'"
    assert stmt.name == "My 'Stream'"
    assert "really" not in repr(stmt)  # the secret is not in repr


def test_identifiers_bare_fold_quoted_keep() -> None:
    (stmt,) = parse(
        'CREATE CHANGE DATA CAPTURE ON Public.Orders, "Sales"."My Table", "a""b", s2.* '
        "TO WEBHOOK 'http://h/x' AS MyStream"
    )
    assert isinstance(stmt, CreateStream)
    assert stmt.tables == ("public.orders", "Sales.My Table", 'a"b', "s2.*")
    assert stmt.name == "mystream"
    assert parse('ALTER CDC STREAM "MyStream" PAUSE') == [AlterStream("MyStream", "pause")]
    assert parse("DROP CHANGE DATA CAPTURE MyStream") == [DropStream("mystream")]


def test_schema_qualified_and_wildcard_tables() -> None:
    (stmt,) = parse("CREATE CHANGE DATA CAPTURE ON public.orders, * TO WEBHOOK 'http://h/'")
    assert isinstance(stmt, CreateStream)
    assert stmt.tables == ("public.orders", "*")
    assert stmt.to_config().tables == ["public.orders", "*"]


def test_keywords_usable_as_names_where_a_name_is_expected() -> None:
    assert parse("ALTER CDC STREAM pause PAUSE; SHOW CDC STREAM STATUS status") == [
        AlterStream("pause", "pause"),
        ShowStreamStatus("status"),
    ]
    assert parse("DROP CHANGE DATA CAPTURE exists") == [DropStream("exists")]
    assert parse("DROP CHANGE DATA CAPTURE if_old") == [DropStream("if_old")]
    (stmt,) = parse("CREATE CHANGE DATA CAPTURE ON topic TO KAFKA 'k:1' TOPIC 'format' AS region")
    assert isinstance(stmt, CreateStream)
    assert (stmt.tables, stmt.topic, stmt.name) == (("topic",), "format", "region")


ALL_OPTIONS = [
    "TOPIC 'events'",
    "FORMAT AVRO",
    "SECRET 's3cret'",
    "SNAPSHOT INITIAL",
    "OPERATIONS (insert, Update, DELETE)",
    "WHERE 'total > 1000'",
]


@pytest.mark.parametrize("order", list(itertools.permutations(range(len(ALL_OPTIONS))))[::37])
def test_options_in_any_order(order: tuple[int, ...]) -> None:
    opts = " ".join(ALL_OPTIONS[i] for i in order)
    (stmt,) = parse(f"CREATE CHANGE DATA CAPTURE ON orders TO KAFKA 'k:9092' {opts} AS 'o'")
    assert stmt == CreateStream(
        tables=("orders",),
        destination="kafka",
        address="k:9092",
        topic="events",
        format="avro",
        secret="s3cret",
        snapshot="initial",
        operations=("INSERT", "UPDATE", "DELETE"),
        where="total > 1000",
        name="o",
    )


def test_to_config_maps_every_option() -> None:
    (stmt,) = parse(
        "CREATE CHANGE DATA CAPTURE ON public.orders, users TO WEBHOOK 'https://api.example.com/h' "
        "SECRET 'whsec' SNAPSHOT INITIAL OPERATIONS (INSERT, UPDATE) WHERE 'total > 1000' "
        "FORMAT JSON AS 'hooks'"
    )
    assert isinstance(stmt, CreateStream)
    cfg = stmt.to_config()
    assert cfg.name == "hooks"
    assert cfg.tables == ["public.orders", "users"]
    assert cfg.destination.type == "webhook"
    assert cfg.destination.address == "https://api.example.com/h"
    assert cfg.secret is not None and cfg.secret.get_secret_value() == "whsec"
    assert cfg.snapshot == "initial"
    assert cfg.operations == [OperationType.INSERT, OperationType.UPDATE]
    assert [(f.name, f.predicate, f.tables) for f in cfg.filters] == [("hooks_where", "total > 1000", [])]
    assert stmt.to_config("other").name == "other"


def test_alter_and_drop_forms() -> None:
    assert parse(
        "ALTER CDC STREAM s BACKFILL; ALTER CDC STREAM s BACKFILL WHERE 'id < 10';"
        "ALTER CDC STREAM s CANCEL BACKFILL; DROP CHANGE DATA CAPTURE IF EXISTS s;"
        "DROP CHANGE DATA CAPTURE s"
    ) == [
        AlterStream("s", "backfill"),
        AlterStream("s", "backfill", "id < 10"),
        AlterStream("s", "cancel_backfill"),
        DropStream("s", if_exists=True),
        DropStream("s"),
    ]


def test_several_statements_comments_and_semicolons() -> None:
    text = """
    /* a block
       comment; with a semicolon */
    SHOW CDC STREAMS;; -- trailing ; comment
    ;
    SHOW CDC STREAM STATUS "a;b"   -- no ; needed at the end
    """
    assert parse(text) == [ShowStreams(), ShowStreamStatus("a;b")]
    assert parse("SHOW CDC STREAMS") == parse("SHOW CDC STREAMS;") == [ShowStreams()]


def test_split_statements_respects_strings_identifiers_and_comments() -> None:
    text = "SHOW CDC STREAMS; -- x;y\nALTER CDC STREAM \"p;q\" BACKFILL WHERE 'a = '';'''; ;"
    spans = split_statements(text)
    assert [text[a:b].strip() for a, b in spans] == [
        "SHOW CDC STREAMS;",
        "-- x;y\nALTER CDC STREAM \"p;q\" BACKFILL WHERE 'a = '';''';",
    ]
    assert split_statements("  ;; -- only a comment\n") == []


def test_is_complete() -> None:
    assert not is_complete("")
    assert not is_complete("SHOW CDC STREAMS")
    assert not is_complete("ALTER CDC STREAM x BACKFILL WHERE 'a;")
    assert is_complete("SHOW CDC STREAMS;  -- done")
    assert is_complete("SHOW CDC STREAMS\n;")


def test_parse_one_reports_positions_in_the_whole_text() -> None:
    text = "SHOW CDC STREAMS;\n\nALTER CDC STREAM x STOP;"
    (a, b), (c, d) = split_statements(text)
    assert parse_one(text, a, b) == ShowStreams()
    with pytest.raises(SqlError) as info:
        parse_one(text, c, d)
    assert info.value.context["line"] == 3
    assert info.value.context["column"] == 20


def test_grammar_is_built_once() -> None:
    assert grammar_parser() is grammar_parser()
    assert grammar_parser().options.parser == "lalr"


@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FFF), min_size=1))
def test_any_string_round_trips_through_quoting(value: str) -> None:
    quoted = "'" + value.replace("'", "''") + "'"
    if not value.strip():
        return
    (stmt,) = parse(f"ALTER CDC STREAM s BACKFILL WHERE {quoted}")
    assert stmt == AlterStream("s", "backfill", value)


# -- errors ---------------------------------------------------------------------------------

KAFKA = "CREATE CHANGE DATA CAPTURE ON orders TO KAFKA 'localhost:9092'"


@pytest.mark.parametrize(
    ("text", "message", "line", "column"),
    [
        (
            "CREATE CHANGE DATA CAPTURE ON orders TO KAFKA 'localhost:9092' TOPC 'x'",
            "expected TOPIC, FORMAT, SECRET, SNAPSHOT, OPERATIONS, WHERE, AS, ';' or end of input "
            "after the Kafka address at line 1, column 64, found 'TOPC'",
            1,
            64,
        ),
        (
            "SHOW CDC STREAMS;\nCREATE CHANGE DATA CAPTURE ON orders INTO KAFKA 'k:1'",
            "expected TO, ',' or '.' after orders at line 2, column 38, found 'INTO'",
            2,
            38,
        ),
        (
            "CREATE CHANGE DATA CAPTURE ON orders TO",
            "expected a destination type (KAFKA, KINESIS or WEBHOOK) after TO at line 1, "
            "column 40, found end of input",
            1,
            40,
        ),
        (
            "CREATE CHANGE DATA CAPTURE ON orders TO KAFKA localhost",
            "expected the Kafka address in quotes, e.g. 'localhost:9092' after the destination "
            "type KAFKA at line 1, column 47, found 'localhost'",
            1,
            47,
        ),
        (
            KAFKA + " TOPIC 't' FORMAT XML",
            "expected JSON, AVRO, DEBEZIUM or CLOUDEVENTS after FORMAT at line 1, column 81, found 'XML'",
            1,
            81,
        ),
        (
            KAFKA + " TOPIC 't' OPERATIONS (INSERT,",
            "expected an operation (INSERT, UPDATE, DELETE or TRUNCATE) after ',' "
            "at line 1, column 93, found end of input",
            1,
            93,
        ),
        (
            "ALTER CDC STREAM x STOP",
            "expected PAUSE, RESUME, BACKFILL or CANCEL after x at line 1, column 20, found 'STOP'",
            1,
            20,
        ),
        (
            "ALTER CDC STREAM x CANCEL",
            "expected BACKFILL after CANCEL at line 1, column 26, found end of input",
            1,
            26,
        ),
        (
            "DROP CHANGE DATA CAPTURE;",
            "expected a stream name or IF EXISTS after CAPTURE at line 1, column 25, found ';'",
            1,
            25,
        ),
        (
            "SHOW CDC",
            "expected STREAMS or STREAM after CDC at line 1, column 9, found end of input",
            1,
            9,
        ),
        (
            "SELECT * FROM orders",
            "expected CREATE, SHOW, ALTER, DROP, ';' or end of input at line 1, column 1, found 'SELECT'",
            1,
            1,
        ),
        (
            "SHOW CDC STREAMZ",
            "expected STREAMS or STREAM after CDC at line 1, column 10, found 'STREAMZ'",
            1,
            10,
        ),
        (
            "ALTER CDC STREAM x PAUSED",
            "expected PAUSE, RESUME, BACKFILL or CANCEL after x at line 1, column 20, found 'PAUSED'",
            1,
            20,
        ),
        (
            "DROP CHANGE DATA CAPTURE if",
            "expected EXISTS after IF at line 1, column 28, found end of input",
            1,
            28,
        ),
        (
            "SHOW CDC STREAMS extra",
            "expected ';' or end of input after STREAMS at line 1, column 18, found 'extra'",
            1,
            18,
        ),
        (
            "SHOW CDC STREAM STATUS 'x'",
            "expected a stream name after STATUS at line 1, column 24, found 'x'",
            1,
            24,
        ),
        (
            "SHOW CDC STREAMS @",
            "expected ';' after STREAMS at line 1, column 18, found '@'",
            1,
            18,
        ),
        (
            "ALTER CDC STREAM x BACKFILL WHERE 'id > 1",
            "unterminated string (close it with ') at line 1, column 35",
            1,
            35,
        ),
        (
            'SHOW CDC STREAM STATUS "x',
            'unterminated or empty quoted name (close it with ") at line 1, column 24',
            1,
            24,
        ),
    ],
)
def test_syntax_errors_say_where_and_what_was_expected(
    text: str, message: str, line: int, column: int
) -> None:
    with pytest.raises(SqlError) as info:
        parse(text)
    assert info.value.message == message
    assert info.value.context["line"] == line
    assert info.value.context["column"] == column
    lines = text.split("\n")
    assert info.value.context["position"] == sum(len(x) + 1 for x in lines[: line - 1]) + column - 1


@pytest.mark.parametrize("text", ["", "   \n\t", ";", " ;; ;", "-- just a comment", "/* x */;"])
def test_empty_statement(text: str) -> None:
    with pytest.raises(SqlError) as info:
        parse(text)
    assert info.value.message == "empty statement"
    assert str(info.value) == "empty statement"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "CREATE CHANGE DATA CAPTURE ON orders TO REDIS 'localhost:6379'",
            "unknown destination type REDIS at line 1, column 41: expected KAFKA, KINESIS or WEBHOOK",
        ),
        (
            "CREATE CHANGE DATA CAPTURE ON orders TO KAFKA 'localhost:9092' FORMAT JSON;",
            "expected TOPIC after the Kafka address at line 1, column 64: "
            "a Kafka stream needs TOPIC 'topic-name'",
        ),
        (
            "CREATE CHANGE DATA CAPTURE ON orders TO KAFKA 'localhost:9092'",
            "expected TOPIC after the Kafka address at line 1, column 63: "
            "a Kafka stream needs TOPIC 'topic-name'",
        ),
        (
            "CREATE CHANGE DATA CAPTURE ON transactions\nTO KINESIS 'transactions-stream'\nFORMAT AVRO;",
            "expected REGION after the Kinesis stream name at line 3, column 1: "
            "a Kinesis stream needs REGION 'aws-region'",
        ),
        (
            "CREATE CHANGE DATA CAPTURE ON orders TO WEBHOOK 'https://h/x' FORMAT AVRO",
            "FORMAT AVRO is for Kafka and Kinesis; webhooks receive JSON at line 1, column 63",
        ),
        (
            "CREATE CHANGE DATA CAPTURE ON orders TO WEBHOOK 'https://h/x' TOPIC 't'",
            "TOPIC does not apply to a webhook; the URL is the whole address at line 1, column 63",
        ),
        (
            "CREATE CHANGE DATA CAPTURE ON orders TO KAFKA 'k:1' TOPIC 't' REGION 'eu-west-1'",
            "REGION is for Kinesis; a Kafka stream takes TOPIC at line 1, column 63",
        ),
        (
            "CREATE CHANGE DATA CAPTURE ON orders TO KINESIS 's' REGION 'r' TOPIC 't'",
            "TOPIC is for Kafka; a Kinesis stream is named by its address at line 1, column 64",
        ),
        (
            "CREATE CHANGE DATA CAPTURE ON orders TO KAFKA 'k:1' TOPIC 't' FORMAT JSON\n"
            "  SECRET 'x' FORMAT AVRO",
            "duplicate option FORMAT at line 2, column 14 (already given at line 1, column 63); "
            "give each option at most once",
        ),
        (
            "CREATE CHANGE DATA CAPTURE ON orders TO KAFKA 'k:1' TOPIC 'a' TOPIC 'b'",
            "duplicate option TOPIC at line 1, column 63 (already given at line 1, column 53); "
            "give each option at most once",
        ),
        (
            "CREATE CHANGE DATA CAPTURE ON orders TO WEBHOOK 'ftp://h/x'",
            "the webhook URL 'ftp://h/x' is not an http(s) URL with a host at line 1, column 49",
        ),
        (
            "CREATE CHANGE DATA CAPTURE ON orders TO WEBHOOK 'http://h/' OPERATIONS (INSERT, UPSERT)",
            "unknown operation 'UPSERT' at line 1, column 81: "
            "expected INSERT, UPDATE, DELETE, TRUNCATE, SCHEMA_CHANGE or READ",
        ),
        (
            "CREATE CHANGE DATA CAPTURE ON orders TO WEBHOOK 'http://h/' OPERATIONS (INSERT, insert)",
            "operation INSERT is listed twice at line 1, column 81",
        ),
        (
            "CREATE CHANGE DATA CAPTURE ON orders, public.x, ORDERS TO WEBHOOK 'http://h/'",
            "table orders is listed twice at line 1, column 49",
        ),
        (
            "CREATE CHANGE DATA CAPTURE ON orders TO KAFKA '' TOPIC 't'",
            "the Kafka address must not be empty at line 1, column 47",
        ),
        (
            "CREATE CHANGE DATA CAPTURE ON orders TO KAFKA 'k:1' TOPIC 't' AS ''",
            "a stream name must not be empty at line 1, column 66",
        ),
        (
            "ALTER CDC STREAM s BACKFILL WHERE '  '",
            "the WHERE predicate must not be empty at line 1, column 35",
        ),
        (
            "CREATE CHANGE DATA CAPTURE ON \"a.b\" TO WEBHOOK 'http://h/'",
            "quoted table names containing '.', '*' or '?' are not supported at line 1, column 31",
        ),
    ],
)
def test_semantic_errors(text: str, message: str) -> None:
    with pytest.raises(SqlError) as info:
        parse(text)
    assert info.value.message == message
    assert {"position", "line", "column"} <= set(info.value.context)


def test_kafka_without_topic_example_from_the_brief() -> None:
    with pytest.raises(SqlError, match=r"expected TOPIC after the Kafka address at line 1"):
        parse("CREATE CHANGE DATA CAPTURE ON orders TO KAFKA 'localhost:9092' FORMAT JSON")
