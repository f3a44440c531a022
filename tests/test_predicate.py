"""SQL predicates: syntax, three-valued logic, exact numbers, errors, and an SQLite oracle."""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from heliosdb_cdc._errors import FilterError
from heliosdb_cdc.pipeline import Predicate, compile_predicate


def ins(**value: Any) -> dict[str, Any]:
    return {"operation": "INSERT", "table": "orders", "value": value, "old_value": None}


def ev3(sql: str, **value: Any) -> bool | None:
    return compile_predicate(sql).evaluate(ins(**value))


# --------------------------------------------------------------------------- basics


@pytest.mark.parametrize(
    ("sql", "row", "expected"),
    [
        ("total > 1000", {"total": 1001}, True),
        ("total > 1000", {"total": 1000}, False),
        ("total >= 1000", {"total": 1000}, True),
        ("total < 10", {"total": 9}, True),
        ("total <= 10", {"total": 11}, False),
        ("total = 5", {"total": 5}, True),
        ("total <> 5", {"total": 5}, False),
        ("total != 5", {"total": 6}, True),
        ("status = 'paid'", {"status": "paid"}, True),
        ("status = 'it''s'", {"status": "it's"}, True),
        ("total > 1 AND status = 'paid'", {"total": 2, "status": "paid"}, True),
        ("total > 1 AND status = 'paid'", {"total": 2, "status": "new"}, False),
        ("total > 5 OR status = 'paid'", {"total": 2, "status": "paid"}, True),
        ("NOT (total > 5)", {"total": 2}, True),
        ("(total > 5 OR total < 0) AND NOT status = 'x'", {"total": -1, "status": "y"}, True),
        ("id IN (1, 2, 3)", {"id": 2}, True),
        ("id IN (1, 2, 3)", {"id": 4}, False),
        ("id NOT IN (1, 2, 3)", {"id": 4}, True),
        ("status IN ('a', 'b')", {"status": "b"}, True),
        ("total BETWEEN 10 AND 20", {"total": 10}, True),
        ("total BETWEEN 10 AND 20", {"total": 21}, False),
        ("total NOT BETWEEN 10 AND 20", {"total": 21}, True),
        ("name LIKE 'ab%'", {"name": "abc"}, True),
        ("name LIKE 'ab%'", {"name": "xab"}, False),
        ("name LIKE 'a_c'", {"name": "abc"}, True),
        ("name LIKE 'a_c'", {"name": "abbc"}, False),
        ("name LIKE '%'", {"name": "multi\nline"}, True),
        ("name LIKE 'a.c'", {"name": "abc"}, False),  # regex characters are literal
        ("name LIKE '100\\%'", {"name": "100%"}, True),  # default escape is backslash
        ("name LIKE '100\\%'", {"name": "1000"}, False),
        ("name LIKE '100!%' ESCAPE '!'", {"name": "100%"}, True),
        ("name LIKE 'a\\_b'", {"name": "a_b"}, True),
        ("name LIKE 'a\\_b'", {"name": "axb"}, False),
        ("name NOT LIKE 'ab%'", {"name": "xy"}, True),
        ("name ILIKE 'AB%'", {"name": "abc"}, True),
        ("name NOT ILIKE 'AB%'", {"name": "abc"}, False),
        ("deleted_at IS NULL", {"deleted_at": None}, True),
        ("deleted_at IS NOT NULL", {"deleted_at": None}, False),
        ("active IS TRUE", {"active": True}, True),
        ("active IS TRUE", {"active": None}, False),
        ("active IS NOT TRUE", {"active": None}, True),
        ("active IS FALSE", {"active": False}, True),
        ("active IS NOT FALSE", {"active": True}, True),
        ("active", {"active": True}, True),
        ("NOT active", {"active": False}, True),
        ("total + 1 = 11", {"total": 10}, True),
        ("total - 1 = 9", {"total": 10}, True),
        ("total * 2 = 20", {"total": 10}, True),
        ("total / 3 = 3", {"total": 10}, True),  # integer division truncates
        ("-total / 3 = -3", {"total": 10}, True),
        ("total % 3 = 1", {"total": 10}, True),
        ("-total % 3 = -1", {"total": 10}, True),  # sign of the dividend, as PostgreSQL
        ("-total = -10", {"total": 10}, True),
        ("2 + 3 * 4 = 14", {}, True),
        ("(2 + 3) * 4 = 20", {}, True),
        ("first || ' ' || last = 'Ada Lovelace'", {"first": "Ada", "last": "Lovelace"}, True),
        ("lower(email) = 'a@b.io'", {"email": "A@B.io"}, True),
        ("upper(code) = 'X1'", {"code": "x1"}, True),
        ("length(code) = 3", {"code": "abc"}, True),
        ("char_length(code) = 3", {"code": "abc"}, True),
        ("trim(code) = 'abc'", {"code": "  abc "}, True),
        ("trim(both 'x' from code) = 'abc'", {"code": "xxabcx"}, True),
        ("coalesce(nick, name) = 'Ada'", {"nick": None, "name": "Ada"}, True),
        ("abs(delta) = 5", {"delta": -5}, True),
        ('"Total Amount" > 1', {"Total Amount": 2}, True),
        ("TOTAL > 1", {"total": 2}, True),  # unquoted names fold to lower case
        ("TRUE", {}, True),
        ("FALSE", {}, False),
        ("x IS NOT DISTINCT FROM NULL", {"x": None}, True),
        ("x IS DISTINCT FROM 1", {"x": None}, True),
        ("total > 1.5", {"total": 2}, True),
        ("total = 1e3", {"total": 1000}, True),
    ],
)
def test_predicate_cases(sql: str, row: dict[str, Any], expected: bool) -> None:
    p = compile_predicate(sql)
    assert isinstance(p, Predicate)
    assert p(ins(**row)) is expected


# --------------------------------------------------------------------------- NULL logic


@pytest.mark.parametrize(
    ("sql", "row", "expected"),
    [
        ("total > 1", {"total": None}, None),
        ("total = NULL", {"total": None}, None),
        ("total <> NULL", {"total": 1}, None),
        ("NOT (total > 1)", {"total": None}, None),
        ("total > 1 AND FALSE", {"total": None}, False),
        ("total > 1 AND TRUE", {"total": None}, None),
        ("total > 1 OR TRUE", {"total": None}, True),
        ("total > 1 OR FALSE", {"total": None}, None),
        ("FALSE AND total > 1", {"total": None}, False),
        ("TRUE OR total > 1", {"total": None}, True),
        ("total IN (1, 2)", {"total": None}, None),
        ("total IN (1, NULL)", {"total": 1}, True),
        ("total IN (1, NULL)", {"total": 2}, None),
        ("total NOT IN (1, NULL)", {"total": 2}, None),  # the classic NOT IN trap
        ("total NOT IN (1, NULL)", {"total": 1}, False),
        ("total BETWEEN 1 AND NULL", {"total": 5}, None),
        ("total BETWEEN 1 AND NULL", {"total": 0}, False),
        ("name LIKE 'a%'", {"name": None}, None),
        ("name || 'x' = 'x'", {"name": None}, None),
        ("lower(name) = 'a'", {"name": None}, None),
        ("total + 1 > 0", {"total": None}, None),
        ("coalesce(total, 0) = 0", {"total": None}, True),
        ("total IS NULL", {"total": None}, True),
        ("missing_col IS NULL", {}, True),  # a column absent from the row reads as NULL
        ("missing_col > 1", {}, None),
        ("NULL", {}, None),
        ("total / 0 > 1", {"total": 5}, None),  # division by zero is UNKNOWN, not a crash
    ],
)
def test_three_valued_logic(sql: str, row: dict[str, Any], expected: bool | None) -> None:
    p = compile_predicate(sql)
    assert p.evaluate(ins(**row)) is expected
    assert p(ins(**row)) is (expected is True)  # UNKNOWN does not pass


# --------------------------------------------------------------------------- numbers


def test_decimal_exactness() -> None:
    p = compile_predicate("total > 1000")
    assert p(ins(total=Decimal("1000.0000000000000000001")))
    assert not p(ins(total=Decimal("1000.0000000000000000000")))
    assert not p(ins(total=Decimal("999.99999999999999999999999")))
    assert compile_predicate("total = 1000.0000000000000000001")(
        ins(total=Decimal("1000.0000000000000000001"))
    )
    assert not compile_predicate("total = 1000.0000000000000000001")(ins(total=1000))
    # float literals are parsed as exact decimals, not binary floats
    assert compile_predicate("total = 0.1")(ins(total=Decimal("0.1")))
    assert compile_predicate("total + 0.2 = 0.3")(ins(total=Decimal("0.1")))
    # exact arithmetic beyond 28 digits
    big = Decimal("12345678901234567890123456789.123456789")
    assert compile_predicate("total + 1 = 12345678901234567890123456790.123456789")(ins(total=big))
    assert compile_predicate("n * 10 = 100000000000000000000000000000000000000")(ins(n=10**37))


def test_float_columns_compare_as_float8() -> None:
    # a float8 column holds the binary value nearest to 1.1; PostgreSQL casts the literal
    assert compile_predicate("x = 1.1")(ins(x=1.1))
    assert compile_predicate("x > 1")(ins(x=1.5))
    assert compile_predicate("x + 0.5 = 2")(ins(x=1.5))


def test_quoted_number_against_number_column() -> None:
    assert compile_predicate("total > '100'")(ins(total=101))
    assert compile_predicate("total IN ('1', '2')")(ins(total=2))
    assert compile_predicate("'5' = 5")(ins())


def test_incompatible_types_are_unknown_at_run_time() -> None:
    assert ev3("total > 100", total="abc") is None
    assert ev3("status = 1", status="shipped") is None
    assert ev3("name LIKE 'a%'", name=5) is None
    assert ev3("total + 1 > 2", total="x") is None
    assert ev3("flag = 1", flag=True) is None  # booleans are not numbers
    assert ev3("active AND total > 1", active="yes", total=2) is None
    assert ev3("lower(n) = 'a'", n=1) is None
    assert ev3("tags = tags", tags=["a"]) is True  # lists/dicts: equality only
    assert ev3("tags > 1", tags=["a"]) is None


# --------------------------------------------------------------------------- rows


def test_delete_reads_old_value() -> None:
    p = compile_predicate("status = 'cancelled'")
    ev = {"operation": "DELETE", "value": None, "old_value": {"id": 1, "status": "cancelled"}}
    assert p(ev)


def test_old_and_new_qualifiers() -> None:
    p = compile_predicate("old.status <> new.status AND status = 'shipped'")
    assert p.uses_old
    ev = {
        "operation": "UPDATE",
        "value": {"id": 1, "status": "shipped"},
        "old_value": {"id": 1, "status": "pending"},
    }
    assert p(ev)
    # without REPLICA IDENTITY FULL there is no old row: UNKNOWN
    assert p.evaluate({**ev, "old_value": None}) is None
    assert p.columns == frozenset({"status"})


def test_toasted_column_absent_from_value_reads_old_row() -> None:
    p = compile_predicate("length(body) > 3")
    ev = {"operation": "UPDATE", "value": {"id": 1}, "old_value": {"id": 1, "body": "long"}}
    assert p(ev)
    assert p.evaluate({**ev, "old_value": None}) is None


def test_rowless_events_do_not_pass_a_predicate() -> None:
    assert compile_predicate("TRUE").evaluate({"operation": "TRUNCATE", "value": None}) is None
    assert not compile_predicate("total > 1")({"operation": "TRUNCATE", "value": None})


def test_evaluate_row() -> None:
    p = compile_predicate("a = old.a + 1")
    assert p.evaluate_row({"a": 2}, {"a": 1}) is True
    assert p.evaluate_row({"a": 2}) is None


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("total >", "cannot parse predicate"),
        ("total > 100 foo", "near 'foo'"),
        ("", "empty predicate"),
        ("   ", "empty predicate"),
        ("total > (SELECT max(total) FROM orders)", "subqueries are not allowed"),
        ("id IN (SELECT id FROM x)", "subqueries are not allowed"),
        ("EXISTS (SELECT 1)", "subqueries are not allowed"),
        ("total > 1; DROP TABLE orders", "';' is not allowed"),
        ("total > 1;", "';' is not allowed"),
        ("evil(total) > 1", "unsupported function evil()"),
        ("pg_sleep(10) IS NULL", "unsupported function pg_sleep()"),
        ("total::int > 1", "casts"),
        ("CAST(total AS INT) > 1", "casts"),
        ("total = $1", "parameters"),
        ("orders.total > 1", "unknown qualifier 'orders'"),
        ("a.b.c = 1", "column references are"),
        ("1 = 'abc'", "cannot compare"),
        ("'a' + 1 = 2", "arithmetic needs numbers"),
        ("1 AND total > 1", "must be boolean"),
        ("42", "must be a condition"),
        ("total ~ 'x'", "unsupported function regexp_like()"),
        ("name LIKE 'abc\\'", "ends with the escape character"),
        ("x BETWEEN SYMMETRIC 1 AND 2", "BETWEEN SYMMETRIC"),
        ("x = E'abc'", "escape strings"),
    ],
)
def test_invalid_predicates(sql: str, message: str) -> None:
    with pytest.raises(FilterError) as err:
        compile_predicate(sql)
    assert message in str(err.value)


def test_unknown_column_lists_known_columns() -> None:
    with pytest.raises(FilterError) as err:
        compile_predicate("totl > 100", columns=["id", "total", "status"])
    msg = str(err.value)
    assert "unknown column 'totl'" in msg
    assert "id, status, total" in msg
    p = compile_predicate("total > 100", columns=["id", "total"])
    assert p(ins(total=101))


def test_parse_error_names_position() -> None:
    with pytest.raises(FilterError, match=r"line 1, column \d+"):
        compile_predicate("(total > 1")


def test_no_eval() -> None:
    # Python syntax is not SQL; nothing is evaluated as Python
    for sql in ("__import__('os').system('true')", "total.__class__ = 1"):
        with pytest.raises(FilterError):
            compile_predicate(sql)


# --------------------------------------------------------------------------- SQLite oracle

COLS = ("a", "b", "c")
ints = st.integers(min_value=-20, max_value=20)


def _num_expr(depth: int) -> st.SearchStrategy[str]:
    leaf = st.one_of(st.sampled_from(COLS), ints.map(str), st.just("NULL"))
    if depth <= 0:
        return leaf
    sub = _num_expr(depth - 1)
    return st.one_of(
        leaf,
        st.tuples(sub, st.sampled_from(["+", "-", "*", "/", "%"]), sub).map(
            lambda t: f"({t[0]} {t[1]} {t[2]})"
        ),
        sub.map(lambda s: f"(-({s}))"),
        st.tuples(sub, sub).map(lambda t: f"coalesce({t[0]}, {t[1]})"),
        sub.map(lambda s: f"abs({s})"),
    )


def _bool_expr(depth: int) -> st.SearchStrategy[str]:
    n = _num_expr(1)
    cmp = st.tuples(n, st.sampled_from(["=", "<>", "<", "<=", ">", ">="]), n).map(
        lambda t: f"({t[0]} {t[1]} {t[2]})"
    )
    leaf = st.one_of(
        cmp,
        st.tuples(n, st.lists(st.one_of(ints.map(str), st.just("NULL")), min_size=1, max_size=4)).flatmap(
            lambda t: st.sampled_from(["IN", "NOT IN"]).map(lambda op: f"({t[0]} {op} ({', '.join(t[1])}))")
        ),
        st.tuples(n, n, n, st.sampled_from(["BETWEEN", "NOT BETWEEN"])).map(
            lambda t: f"({t[0]} {t[3]} {t[1]} AND {t[2]})"
        ),
        st.tuples(n, st.sampled_from(["IS NULL", "IS NOT NULL"])).map(lambda t: f"({t[0]} {t[1]})"),
    )
    if depth <= 0:
        return leaf
    sub = _bool_expr(depth - 1)
    return st.one_of(
        leaf,
        st.tuples(sub, st.sampled_from(["AND", "OR"]), sub).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        sub.map(lambda s: f"(NOT {s})"),
    )


_DB = sqlite3.connect(":memory:")


def _sqlite(sql: str, row: dict[str, int | None]) -> bool | None:
    query = (
        f"SELECT CASE WHEN {sql} THEN 1 WHEN NOT ({sql}) THEN 0 ELSE NULL END "
        "FROM (SELECT ? AS a, ? AS b, ? AS c)"
    )
    (r,) = _DB.execute(query, (row["a"], row["b"], row["c"])).fetchone()
    return None if r is None else bool(r)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sql=_bool_expr(2),
    row=st.fixed_dictionaries({c: st.one_of(st.none(), ints) for c in COLS}),
)
def test_matches_sqlite_on_integer_rows(sql: str, row: dict[str, int | None]) -> None:
    expected = _sqlite(sql, row)
    got = compile_predicate(sql).evaluate(ins(**row))
    assert got is expected, f"{sql} with {row}: sqlite={expected} ours={got}"


@settings(max_examples=200, deadline=None)
@given(
    pattern=st.text(alphabet="ab%_\\", max_size=6),
    value=st.text(alphabet="ab%_\\", max_size=6),
)
def test_like_matches_sqlite(pattern: str, value: str) -> None:
    if pattern.count("\\") and pattern.endswith("\\") and (len(pattern) - len(pattern.rstrip("\\"))) % 2:
        with pytest.raises(FilterError):
            compile_predicate(f"v LIKE '{pattern}'")
        return
    (r,) = _DB.execute("SELECT ? LIKE ? ESCAPE '\\' COLLATE BINARY", (value, pattern)).fetchone()
    # SQLite's LIKE is case-insensitive for ASCII; the alphabet has no case pairs
    assert compile_predicate(f"v LIKE '{pattern}'")(ins(v=value)) is bool(r)
