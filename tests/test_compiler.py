import itertools
import json
import operator
from pathlib import Path

import jmespath
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jmespath.functions import Functions, signature
from jmespath.visitor import TreeInterpreter

from runner.compiler import CompileError, Function, SearchError, compile, compile_object
from runner.records import expressions

# The official suite lies beside the repository (as CI lays it out); only its cases are
# skipped where it is absent, the other tests here always run.
COMPLIANCE = Path(__file__).resolve().parents[1].parent / "shared" / "jmespath-compliance"

# The jmespath parser warns about `foo` literals (not JSON), which compile() rejects.
pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")


def _canonical(value):
    """Return a form of a JSON value in which == is JMESPath equality (true != 1)."""
    if isinstance(value, bool):
        return ("boolean", value)
    if isinstance(value, (int, float)):
        return ("number", value)
    if isinstance(value, list):
        return ("array", [_canonical(item) for item in value])
    if isinstance(value, dict):
        return ("object", {key: _canonical(item) for key, item in value.items()})
    return (type(value).__name__, value)


def _compliance_cases():
    for path in sorted(COMPLIANCE.glob("*.json")):
        if path.name == "schema.json":
            continue
        cases = (
            (group["given"], case)
            for group in json.loads(path.read_text())
            for case in group["cases"]
        )
        for number, (given_value, case) in enumerate(cases, start=1):
            yield pytest.param(given_value, case, id=f"{path.name}:{number}")


@pytest.mark.skipif(not COMPLIANCE.is_dir(), reason=f"no JMESPath compliance suite at {COMPLIANCE}")
@pytest.mark.parametrize(("data", "case"), list(_compliance_cases()))
def test_compliance(data, case):
    """Every case, through the entry point specs use: runner.expressions.compile."""
    expression = case["expression"]
    if "bench" in case:
        expected = jmespath.search(expression, data)
        assert _canonical(expressions.compile(expression).search(data)) == _canonical(expected)
    elif case.get("error") in ("syntax", "invalid-arity", "unknown-function"):
        with pytest.raises(expressions.ExpressionError):
            expressions.compile(expression)
    elif "error" in case:
        with pytest.raises((expressions.ExpressionError, SearchError)):
            expressions.compile(expression).search(data)
    else:
        result = expressions.compile(expression).search(data)
        assert _canonical(result) == _canonical(case["result"])


class _SpecFunctions(Functions):
    """jmespath's functions, fixed where they stray from the spec.

    The package checks only the first argument of a variadic function, so
    merge(`{}`, 'a') passes, and its contains() uses Python's ==, so
    contains(`[1]`, `true`) is true.
    """

    def _type_check(self, actual, signature, function_name):
        if signature and signature[-1].get("variadic"):
            signature = signature + signature[-1:] * (len(actual) - len(signature))
        super()._type_check(actual, signature, function_name)

    @signature({"types": ["array", "string"]}, {"types": []})
    def _func_contains(self, subject, search):
        if isinstance(subject, str):
            return isinstance(search, str) and search in subject
        return any(_canonical(item) == _canonical(search) for item in subject)


class _SpecInterpreter(TreeInterpreter):
    """jmespath's interpreter, comparing as the spec says.

    The package orders strings (or raises TypeError comparing a string with a
    number) and lets [1] equal [true]; the spec orders only numbers and keeps
    booleans apart from numbers at any depth.
    """

    _ORDERINGS = {"lt": operator.lt, "lte": operator.le, "gt": operator.gt, "gte": operator.ge}

    def visit_comparator(self, node, value):
        left, right = (self.visit(child, value) for child in node["children"])
        if node["value"] in ("eq", "ne"):
            return (_canonical(left) == _canonical(right)) == (node["value"] == "eq")
        if _canonical(left)[0] != "number" or _canonical(right)[0] != "number":
            return None
        return self._ORDERINGS[node["value"]](left, right)


def _reference(expression, data):
    interpreter = _SpecInterpreter(jmespath.Options(custom_functions=_SpecFunctions()))
    return interpreter.visit(jmespath.compile(expression).parsed, data)


NAMES = st.sampled_from(["a", "b", "c"])
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 3)
    | st.sampled_from([0.0, 1.5, -2.5])
    | st.sampled_from(["", "a", "b", "ab", "1", "2.5"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(NAMES, children, max_size=3),
    max_leaves=12,
)
LITERALS = JSON.map(lambda value: f"`{json.dumps(value)}`") | st.sampled_from(["'a'", "''"])
OPTIONAL_INDEX = st.none() | st.integers(-4, 4)
SLICES = st.tuples(OPTIONAL_INDEX, OPTIONAL_INDEX, st.none() | st.sampled_from([-2, -1, 1, 2])).map(
    lambda parts: "[" + ":".join("" if part is None else str(part) for part in parts) + "]"
)
UNARY = [
    "abs", "avg", "ceil", "floor", "keys", "length", "max", "min", "not_null", "reverse",
    "sort", "sum", "to_array", "to_number", "to_string", "type", "values",
]  # fmt: skip
BINARY = ["contains", "ends_with", "join", "merge", "not_null", "starts_with"]
BY = ["max_by", "min_by", "sort_by"]
COMPARATORS = st.sampled_from(["==", "!=", "<", "<=", ">", ">="])


def _extend(inner):
    """Expressions built from smaller ones: chains of suffixes, operators, functions."""
    parenthesised = inner.map(lambda text: f"({text})")
    condition = inner | st.tuples(inner, COMPARATORS, inner).map(" ".join)
    suffix = st.one_of(
        NAMES.map(lambda name: f".{name}"),
        st.integers(-3, 3).map(lambda index: f"[{index}]"),
        SLICES,
        st.sampled_from(["[*]", ".*", "[]"]),
        condition.map(lambda text: f"[?{text}]"),
        st.lists(inner, min_size=1, max_size=3).map(lambda items: f".[{', '.join(items)}]"),
        st.lists(st.tuples(NAMES, inner), min_size=1, max_size=2).map(
            lambda pairs: ".{" + ", ".join(f"{key}: {text}" for key, text in pairs) + "}"
        ),
    )
    head = NAMES | st.just("@") | parenthesised
    return st.one_of(
        st.tuples(head, st.lists(suffix, min_size=1, max_size=4)).map(
            lambda parts: parts[0] + "".join(parts[1])
        ),
        st.lists(inner, min_size=1, max_size=3).map(lambda items: f"[{', '.join(items)}]"),
        st.tuples(inner, st.sampled_from(["|", "||", "&&"]), inner).map(" ".join),
        st.tuples(inner, COMPARATORS, inner).map(" ".join),
        parenthesised.map(lambda text: f"!{text}"),
        st.tuples(st.sampled_from(UNARY), inner).map(lambda call: f"{call[0]}({call[1]})"),
        st.tuples(st.sampled_from(BINARY), inner, inner).map(lambda c: f"{c[0]}({c[1]}, {c[2]})"),
        st.tuples(st.sampled_from(BY), inner, inner).map(lambda c: f"{c[0]}({c[1]}, &{c[2]})"),
        st.tuples(inner, inner).map(lambda c: f"map(&{c[0]}, {c[1]})"),
    )


EXPRESSIONS = st.recursive(NAMES | st.just("@") | LITERALS, _extend, max_leaves=8)


def _outcome(search, expression, data, errors):
    try:
        return ("value", _canonical(search(expression, data)))
    except errors:
        return ("error",)


@settings(max_examples=300, deadline=None)
@given(EXPRESSIONS, JSON)
def test_search_agrees_with_jmespath(expression, data):
    expected = _outcome(_reference, expression, data, Exception)
    actual = _outcome(
        lambda text, value: compile(text).search(value),
        expression,
        data,
        (CompileError, SearchError),
    )
    assert actual == expected


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ab.*[]?@|&!=<>(){}:,'`\"\\0-1 ", max_size=16), JSON)
def test_only_compile_and_search_errors_escape(text, data):
    try:
        compiled = compile(text)
    except CompileError:
        return
    try:
        compiled.search(data)
    except SearchError:
        pass


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("summ(a)", "unknown function 'summ()' at column 1"),
        ("a.b | summ(a)", "unknown function 'summ()' at column 7"),
        ("abs(a, b)", "abs() takes 1 argument, got 2 at column 1"),
        ("[abs(a), abs()]", "abs() takes 1 argument, got 0 at column 10"),
        ("a[?abs(b) > `1`].abs()", "abs() takes 1 argument, got 0 at column 18"),
        ("not_null()", "not_null() takes at least 1 argument, got 0 at column 1"),
        ("starts_with(a)", "starts_with() takes 2 arguments, got 1 at column 1"),
        ("sort_by(people, age)", "sort_by() argument 2 expects expression (&...) at column 1"),
        ("length(&a)", "length() expects string, array or object, got expression at column 1"),
        ("a || &b", "'&' expressions can only be function arguments at column 6"),
        ("a[1:2][8:2:0]", "slice step cannot be 0 at column 7"),
        ("foo.", "unexpected end of expression at column 5"),
        ("foo bar", "unexpected 'bar' at column 5"),
        ("foo[?a==]", "unexpected ']' at column 9"),
        ("a ~ b", "unexpected character '~' at column 3"),
        ("'abc", "unterminated raw string at column 1"),
        ('"to_string"(a)', "a function name cannot be quoted at column 1"),
        ("a == `foo`", "literal is not valid JSON at column 6"),
        ("", "empty expression at column 1"),
        ("(" * 1000 + "a" + ")" * 1000, "expression is nested too deeply at column 1"),
    ],
)
def test_compile_error_message(expression, message):
    with pytest.raises(CompileError) as error:
        compile(expression)
    assert str(error.value) == message


@pytest.mark.parametrize(
    ("expression", "data", "message"),
    [
        ("sum(@)", "a", "sum() expects array[number], got string"),
        ("abs(@)", "a", "abs() expects number, got string"),
        (
            "sum(@)",
            [1, True],
            "sum() expects array[number], got array containing number and boolean",
        ),
        (
            "max(@)",
            [1, "a"],
            "max() expects array[number] or array[string], got array containing number and string",
        ),
        (
            "join(',', @)",
            [1],
            "join() argument 2 expects array[string], got array containing number",
        ),
        ("merge(@, `1`)", {}, "merge() argument 2 expects object, got number"),
        (
            "sort_by(@, &a)",
            [{"a": 1}, {"a": "x"}],
            "sort_by() expects the expression to return only numbers or only strings,"
            " got number and string",
        ),
        ("sum('a')", None, "sum() expects array[number], got string"),
    ],
)
def test_search_error_message(expression, data, message):
    compiled = compile(expression)
    with pytest.raises(SearchError) as error:
        compiled.search(data)
    assert str(error.value) == message


def test_equality_keeps_booleans_apart_from_numbers():
    compiled = compile("[a == b, a == `[1]`, c == `1`, c == d]")
    assert compiled.search({"a": [1.0], "b": [True], "c": True, "d": 1}) == [
        False,
        True,
        False,
        False,
    ]


def test_literal_results_are_fresh_copies():
    compiled = compile("{tags: `[]`}")
    compiled.search({})["tags"].append("changed")
    assert compiled.search({}) == {"tags": []}


def test_several_expressions_compile_into_one_object_of_their_values():
    data = {"items": [{"n": 2}, {"n": 3}], "name": "ada"}
    compiled = compile_object(
        [("total", "sum(items[].n)"), ("count", "length(items)"), ("who", "upper(name)")],
        CUSTOM,
    )

    assert compiled.search(data) == {"total": 5, "count": 2, "who": "ADA"}
    assert compiled.text == '{"total": sum(items[].n), "count": length(items), "who": upper(name)}'
    assert compiled.search(None) is None  # as the multi-select hash it is
    assert compile_object([("tags", "`[]`")]).search({}) == jmespath.search("{tags: `[]`}", {})


def test_an_object_of_expressions_fails_as_its_expressions_do():
    with pytest.raises(CompileError) as caught:
        compile_object([("a", "length(items)"), ("b", "sum(")])
    assert str(caught.value) == compile_error("sum(")
    with pytest.raises(SearchError) as caught:
        compile_object([("a", "length(items)"), ("b", "sum(name)")]).search(
            {"items": [], "name": "x"}
        )
    assert str(caught.value) == "sum() expects array[number], got string"


def compile_error(text):
    try:
        compile(text)
    except CompileError as error:
        return str(error)


UPPER = Function("upper", str.upper, ("string",))
PAD = Function("pad", lambda text, width=6: text.ljust(width), ("string", "number"), min_args=1)
CONCAT = Function("concat", lambda *texts: "".join(texts), ("string",), variadic=True)
COUNT_IF = Function(
    "count_if",
    lambda items, test: sum(1 for item in items if test(item) is True),
    ("array", "expression"),
)
CUSTOM = {function.name: function for function in (UPPER, PAD, CONCAT, COUNT_IF)}


def test_custom_functions_are_called():
    data = {"name": "ada", "items": [{"ok": True}, {"ok": False}, {"ok": True}]}
    compiled = compile(
        "[upper(name), pad(name), pad(name, `4`), concat(name, '!'), count_if(items, &ok)]", CUSTOM
    )
    assert compiled.search(data) == ["ADA", "ada   ", "ada ", "ada!", 2]


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("upper(a, b)", "upper() takes 1 argument, got 2 at column 1"),
        ("pad()", "pad() takes 1 to 2 arguments, got 0 at column 1"),
        ("concat()", "concat() takes at least 1 argument, got 0 at column 1"),
        ("count_if(items, ok)", "count_if() argument 2 expects expression (&...) at column 1"),
        ("upper(&a)", "upper() expects string, got expression at column 1"),
    ],
)
def test_custom_function_compile_errors(expression, message):
    with pytest.raises(CompileError) as error:
        compile(expression, CUSTOM)
    assert str(error.value) == message


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("upper(`1`)", "upper() expects string, got number"),
        ("pad('a', 'b')", "pad() argument 2 expects number, got string"),
        ("concat('a', 'b', `[]`)", "concat() argument 3 expects string, got array"),
        ("count_if(`{}`, &ok)", "count_if() argument 1 expects array, got object"),
    ],
)
def test_custom_function_type_errors(expression, message):
    compiled = compile(expression, CUSTOM)
    with pytest.raises(SearchError) as error:
        compiled.search({})
    assert str(error.value) == message


def test_custom_function_is_called_on_every_search():
    counter = itertools.count()
    compiled = compile("ticket()", {"ticket": Function("ticket", lambda: next(counter))})
    assert [compiled.search(None), compiled.search(None)] == [0, 1]


CONTEXTUAL = {
    "tag": Function("tag", lambda context, text: f"{context}:{text}", ("string",), contextual=True)
}


@pytest.mark.parametrize(
    "expression",
    [
        "tag(name)",
        "map(&tag(@), [name])[0]",  # in an &expression
        "[" * 11 + "tag(name)" + "]" * 11 + "[0]" * 11,  # deep: in a function of its own
    ],
)
def test_a_contextual_function_gets_the_searchs_context_else_the_compiled_one(expression):
    compiled = compile(expression, CONTEXTUAL, context="default")
    assert compiled.search({"name": "ada"}) == "default:ada"
    assert compiled.search({"name": "ada"}, "given") == "given:ada"


def test_custom_function_failure_is_a_search_error():
    def explode(text):
        raise KeyError(text)

    compiled = compile("explode(a)", {"explode": Function("explode", explode, ("string",))})
    with pytest.raises(SearchError) as error:
        compiled.search({"a": "x"})
    assert str(error.value) == "explode() failed: 'x'"


def test_function_with_unknown_type_is_refused():
    with pytest.raises(ValueError) as error:
        Function("f", str, ("strnig",))
    assert str(error.value) == "f(): unknown type 'strnig'"
