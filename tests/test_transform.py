"""Transformations: the guide's Jinja2 and JSONPath examples, JSON safety, sandbox, errors."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonpath_ng.ext import parse as jsonpath_parse

from heliosdb_cdc._config import TransformationConfig
from heliosdb_cdc._errors import FilterError
from heliosdb_cdc.pipeline import (
    SAMPLE_EVENT,
    Transformation,
    TransformRegistry,
    compile_transformation,
)
from heliosdb_cdc.pipeline._transform import _dumps as dumps

GUIDE_TEMPLATE = r"""
transformations:
  - name: slack_format
    target: https://hooks.slack.com/services/...
    template: |
      {
        "text": "New {{ operation }} on {{ table }}",
        "blocks": [
          {
            "type": "section",
            "text": {
              "type": "mrkdwn",
              "text": "*{{ operation }}* on `{{ table }}`\nKey: {{ key }}"
            }
          }
        ]
      }
"""

GUIDE_JSONPATH = """
transformations:
  - name: extract_fields
    target: https://analytics.io/webhooks/orders
    jsonpath:
      order_id: "$.key.id"
      customer: "$.value.customer_id"
      amount: "$.value.total"
      operation: "$.operation"
"""


def load(text: str) -> list[Transformation]:
    doc = yaml.safe_load(text)
    return [compile_transformation(TransformationConfig(**t)) for t in doc["transformations"]]


def tpl(template: str, name: str = "t") -> Transformation:
    return compile_transformation(TransformationConfig(name=name, target="https://x.io/h", template=template))


def jp(mapping: dict[str, str], name: str = "j") -> Transformation:
    return compile_transformation(TransformationConfig(name=name, target="https://x.io/h", jsonpath=mapping))


def decode(body: bytes) -> Any:
    return json.loads(body, parse_float=Decimal)


# --------------------------------------------------------------------------- the guide


def test_guide_slack_template() -> None:
    (t,) = load(GUIDE_TEMPLATE)
    assert t.name == "slack_format"
    assert t.target == "https://hooks.slack.com/services/..."
    assert t.kind == "template"
    out = decode(t.apply(SAMPLE_EVENT))
    assert out["text"] == "New INSERT on orders"
    block = out["blocks"][0]
    assert block["type"] == "section"
    assert block["text"]["type"] == "mrkdwn"
    # the key dict prints as JSON text inside the string, quotes escaped
    assert block["text"]["text"] == '*INSERT* on `orders`\nKey: {"id":123}'


def test_guide_slack_template_with_awkward_values() -> None:
    (t,) = load(GUIDE_TEMPLATE)
    ev = {**SAMPLE_EVENT, "table": 'we"ird\\table\n', "key": {"id": 'a"b', "n": Decimal("1.10")}}
    out = decode(t.apply(ev))
    assert out["text"] == 'New INSERT on we"ird\\table\n'
    assert out["blocks"][0]["text"]["text"].endswith('Key: {"id":"a\\"b","n":1.10}')


def test_guide_jsonpath() -> None:
    (t,) = load(GUIDE_JSONPATH)
    assert t.kind == "jsonpath"
    body = t.apply(SAMPLE_EVENT)
    assert decode(body) == {
        "order_id": 123,
        "customer": 456,
        "amount": Decimal("99.99"),
        "operation": "INSERT",
    }
    assert b'"amount":99.99' in body


def test_jsonpath_keeps_decimal_digits_and_nulls() -> None:
    (t,) = load(GUIDE_JSONPATH)
    ev = {**SAMPLE_EVENT, "value": {"total": Decimal("1000.0000000000000000001")}}
    body = t.apply(ev)
    assert b'"amount":1000.0000000000000000001' in body
    assert decode(body)["customer"] is None  # no match -> null
    deleted = {**SAMPLE_EVENT, "operation": "DELETE", "value": None, "old_value": {"id": 123}}
    assert decode(t.apply(deleted)) == {
        "order_id": 123,
        "customer": None,
        "amount": None,
        "operation": "DELETE",
    }


# --------------------------------------------------------------------------- JSONPath


def test_jsonpath_several_matches_make_a_list() -> None:
    t = jp({"tags": "$.value.tags[*].name", "first": "$.value.tags[0].name", "all": "$.key.*"})
    ev = {**SAMPLE_EVENT, "value": {"tags": [{"name": "a"}, {"name": "b"}]}}
    assert decode(t.apply(ev)) == {"tags": ["a", "b"], "first": "a", "all": 123}


def test_jsonpath_extended_syntax() -> None:
    t = jp({"big": "$.value.items[?(@.qty > 1)].sku", "n": "$.value.items.`len`"})
    ev = {**SAMPLE_EVENT, "value": {"items": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 3}]}}
    assert decode(t.apply(ev)) == {"big": "b", "n": 2}


@pytest.mark.parametrize(
    "expr",
    [
        "$.key.id",
        "$.value.total",
        "$.value",
        "$.value.missing",
        "$.value.tags[0]",
        "$.value.tags[5]",
        "$.value['customer_id']",
        "$.old_value.id",
        "$.operation",
        "$.key.id.deeper",
        "$",
        "$.value.len",
        "$.value.this",
        "$.value.parent",
    ],
)
def test_jsonpath_fast_path_agrees_with_jsonpath_ng(expr: str) -> None:
    ev = {
        **SAMPLE_EVENT,
        "value": {**SAMPLE_EVENT["value"], "tags": ["x", "y"], "len": 1, "this": 2, "parent": 3},
        "old_value": None,
    }
    matches = [m.value for m in jsonpath_parse(expr).find(ev)]
    expected = None if not matches else matches[0] if len(matches) == 1 else matches
    got = decode(jp({"f": expr}).apply(ev))["f"]
    assert got == expected


@pytest.mark.parametrize("expr", ["$.[[", "$.value.(", "value..", "$.key[?(@.x ==]"])
def test_bad_jsonpath(expr: str) -> None:
    with pytest.raises(FilterError) as err:
        jp({"order_id": "$.key.id", "broken": expr}, name="extract")
    msg = str(err.value)
    assert "invalid JSONPath for field 'broken'" in msg
    assert repr(expr) in msg
    assert "transformation 'extract'" in msg


def test_empty_jsonpath() -> None:
    with pytest.raises(FilterError, match="empty JSONPath"):
        jp({"a": " "})
    with pytest.raises(FilterError, match="at least one field"):
        jp({})


# --------------------------------------------------------------------------- templates


def test_template_values_by_position() -> None:
    t = tpl(
        '{"total": {{ value.total }}, "n": {{ sequence }}, "old": {{ old_value }},'
        ' "row": {{ value }}, "s": "{{ value.status }}", "js": {{ value | tojson }},'
        ' "txt": "{{ value.total }} / {{ old_value }}", "ok": {{ true }}}'
    )
    out = decode(t.apply(SAMPLE_EVENT))
    assert out == {
        "total": Decimal("99.99"),
        "n": 12345,
        "old": None,
        "row": {"id": 123, "customer_id": 456, "total": Decimal("99.99"), "status": "pending"},
        "s": "pending",
        "js": {"id": 123, "customer_id": 456, "total": Decimal("99.99"), "status": "pending"},
        "txt": "99.99 / null",
        "ok": True,
    }


def test_tojson_keeps_decimal_digits() -> None:
    t = tpl('{"v": {{ value | tojson }}, "t": {{ value.total | tojson }}}')
    ev = {**SAMPLE_EVENT, "value": {"total": Decimal("1000.0000000000000000001")}}
    body = t.apply(ev)
    assert body.count(b"1000.0000000000000000001") == 2
    # plain JSON, not Jinja's HTML-safe variant (\u003c)
    assert tpl('{"v": {{ "<a>" | tojson }}}').apply(SAMPLE_EVENT) == b'{"v": "<a>"}'


def test_event_variable_and_loops() -> None:
    t = tpl(
        '{"id": "{{ event.event_id }}", "cols": [{% for k in value %}"{{ k }}"'
        '{{ "," if not loop.last }}{% endfor %}]}'
    )
    assert decode(t.apply(SAMPLE_EVENT)) == {
        "id": "evt_abc123",
        "cols": ["id", "customer_id", "total", "status"],
    }


def test_template_conditionals_on_operation() -> None:
    t = tpl('{"op": "{{ operation }}"{% if old_value %}, "before": {{ old_value }}{% endif %}}')
    upd = {**SAMPLE_EVENT, "operation": "UPDATE", "old_value": {"status": "new"}}
    assert decode(t.apply(upd)) == {"op": "UPDATE", "before": {"status": "new"}}
    assert decode(t.apply(SAMPLE_EVENT)) == {"op": "INSERT"}


def test_template_syntax_error_names_line() -> None:
    with pytest.raises(FilterError) as err:
        tpl('{\n  "a": "{{ operation }}",\n  "b": "{% if %}"\n}', name="broken")
    msg = str(err.value)
    assert "template syntax error at line 3" in msg
    assert "transformation 'broken'" in msg
    assert err.value.context["line"] == 3


def test_undefined_variable_at_compile_time() -> None:
    with pytest.raises(FilterError) as err:
        tpl('{"a": "{{ opration }}"}')
    assert "undefined variable(s) opration" in str(err.value)
    assert "available: event, event_id" in str(err.value)


def test_undefined_attribute_at_run_time_names_the_event() -> None:
    t = tpl('{"email": "{{ value.email }}"}')  # the sample row lacks it: not a compile error
    ev = {**SAMPLE_EVENT, "event_id": "evt_42", "value": {"id": 1}}
    with pytest.raises(FilterError) as err:
        t.apply(ev)
    assert err.value.context["event_id"] == "evt_42"
    assert "email" in str(err.value)
    assert decode(t.apply({**ev, "value": {"email": "a@b.io"}})) == {"email": "a@b.io"}


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ event.__class__ }}",
        "{{ value['__class__'] }}",
        "{{ cycler.__init__.__globals__ }}",
    ],
)
def test_sandbox_escape_attempts_rejected_at_compile_time(template: str) -> None:
    with pytest.raises(FilterError) as err:
        tpl(template)
    assert "is not allowed in the sandboxed template" in str(err.value)


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{\"a\": \"{{ ''|attr('__class__') }}\"}", "unsafe"),
        ('{"a": "{{ value.update({}) }}"}', "unsafe"),
        ('{"a": "{{ value.clear() }}"}', "unsafe"),
    ],
)
def test_sandbox_blocks_at_render(template: str, message: str) -> None:
    with pytest.raises(FilterError) as err:
        tpl(template)
    assert "blocked by the sandbox" in str(err.value)
    assert message in str(err.value)


def test_sandbox_range_limit_is_a_run_time_error() -> None:
    t = tpl('{"n": {{ range(10**9) | list | length }}}')
    with pytest.raises(FilterError) as err:
        t.apply(SAMPLE_EVENT)
    assert err.value.context["event_id"] == "evt_abc123"


@pytest.mark.parametrize(
    "template",
    [
        '{"a": {{ table }}}',  # unquoted string
        "not json at all",
        '{"a": 1,}',
        "{% for k in value %}{{ k }}{% endfor %}",
    ],
)
def test_non_json_output_rejected_at_compile_time(template: str) -> None:
    with pytest.raises(FilterError) as err:
        tpl(template)
    assert "template output is not valid JSON" in str(err.value)


def test_non_json_output_at_run_time() -> None:
    t = tpl('{"a": 1{% if value.status == "odd" %},{% endif %}}')
    with pytest.raises(FilterError) as err:
        t.apply({**SAMPLE_EVENT, "value": {"status": "odd"}})
    assert "not valid JSON" in str(err.value)
    assert err.value.context["event_id"] == "evt_abc123"


def test_control_characters_in_template() -> None:
    with pytest.raises(FilterError, match="control characters"):
        tpl('{"a": "\x00"}')


def test_underscore_columns_are_reachable() -> None:
    t = tpl('{"a": "{{ value._legacy }}", "b": "{{ value[\'_x\'] }}"}')
    ev = {**SAMPLE_EVENT, "value": {"_legacy": 1, "_x": 2}}
    assert decode(t.apply(ev)) == {"a": "1", "b": "2"}


def test_apply_is_callable() -> None:
    t = tpl('{"op": "{{ operation }}"}')
    assert t(SAMPLE_EVENT) == t.apply(SAMPLE_EVENT) == b'{"op": "INSERT"}'


# --------------------------------------------------------------------------- registry


def test_registry_for_target() -> None:
    transforms = load(GUIDE_TEMPLATE) + load(GUIDE_JSONPATH)
    reg = TransformRegistry(transforms)
    assert len(reg) == 2
    slack = reg.for_target("https://hooks.slack.com/services/...")
    assert slack is not None and slack.name == "slack_format"
    found = reg.for_target("https://analytics.io/webhooks/orders/")  # trailing slash
    assert found is not None and found.name == "extract_fields"
    assert reg.for_target("https://other.io/") is None
    by_stream = TransformRegistry(
        [TransformationConfig(name="s", target="orders_stream", jsonpath={"id": "$.key.id"})]
    )
    t = by_stream.for_target("orders_stream")
    assert t is not None and t.name == "s"
    assert {x.name for x in reg} == {"slack_format", "extract_fields"}


def test_registry_duplicate_target() -> None:
    a = TransformationConfig(name="a", target="s", jsonpath={"id": "$.key.id"})
    b = TransformationConfig(name="b", target="s", jsonpath={"id": "$.key.id"})
    with pytest.raises(FilterError, match="'a' and 'b' both target 's'"):
        TransformRegistry([a, b])


# --------------------------------------------------------------------------- docs


def test_every_yaml_example_in_the_docs_compiles_and_renders_json() -> None:
    import pathlib
    import re

    doc = (pathlib.Path(__file__).parents[1] / "docs" / "transformations.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", doc, re.S)
    assert len(blocks) >= 3
    for block in blocks:
        for t in load(block):
            for ev in (
                SAMPLE_EVENT,
                {**SAMPLE_EVENT, "operation": "UPDATE", "old_value": {"status": "new"}},
            ):
                json.loads(t.apply(ev))


# --------------------------------------------------------------------------- properties

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.text(),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(table=st.text(), key=st.dictionaries(st.text(max_size=5), json_values, max_size=3))
def test_guide_slack_template_is_json_for_any_values(table: str, key: dict[str, Any]) -> None:
    (t,) = load(GUIDE_TEMPLATE)
    out = decode(t.apply({**SAMPLE_EVENT, "table": table, "key": key}))
    assert out["text"] == f"New INSERT on {table}"
    text = out["blocks"][0]["text"]["text"]
    assert decode(text.split("\nKey: ", 1)[1].encode()) == decode(dumps(key))


@settings(max_examples=300, deadline=None)
@given(v=json_values)
def test_values_outside_strings_are_json_literals(v: Any) -> None:
    t = tpl('{"v": {{ value.v if value.v is not string else value.v | tojson }}}')
    assert decode(t.apply({**SAMPLE_EVENT, "value": {"v": v}}))["v"] == decode(dumps(v))


def test_integers_beyond_64_bits() -> None:
    big = 2**70
    (t,) = load(GUIDE_JSONPATH)
    assert decode(t.apply({**SAMPLE_EVENT, "key": {"id": big}}))["order_id"] == big
    out = tpl('{"a": {{ key.id }}, "b": {{ key | tojson }}, "c": "{{ key }}"}').apply(
        {**SAMPLE_EVENT, "key": {"id": -big}}
    )
    assert decode(out) == {"a": -big, "b": {"id": -big}, "c": f'{{"id":{-big}}}'}
