"""Parsing with the jmespath package's parser, and the checks made before any code is
written: valid JSON literals, known functions, their arities and `&expression` arguments,
and slice steps. Each error names the column of the token at fault."""

from __future__ import annotations

import json
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping

from jmespath import exceptions as jmespath_errors
from jmespath.lexer import Lexer
from jmespath.parser import Parser

from runner.compiler.errors import CompileError, words
from runner.compiler.functions import Function


def parse(text: str, functions: Mapping[str, Function]) -> dict:
    """Return the syntax tree of an expression, or raise CompileError saying what is wrong
    and where."""
    with warnings.catch_warnings():
        # The lexer warns of `foo`-style literals; _check_literals refuses them instead.
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        tree = _parse_tree(text)
        tokens = list(Lexer().tokenize(text))
        _check_literals(text, tokens)
    _check(tree, tokens, functions)
    return tree


class _QuotingParser(Parser):
    """jmespath's parser, marking each field written as a quoted identifier ("USA") with its
    column: the tree alone does not tell `"USA"` from `USA`."""

    _CACHE: dict = {}  # its own: its trees carry the marks

    def _token_nud_quoted_identifier(self, token: dict) -> dict:
        field = super()._token_nud_quoted_identifier(token)
        return {**field, "quoted_at": token["start"] + 1}


def quoted_operands(text: str) -> list[tuple[str, int]]:
    """The name and column of each quoted identifier that is a whole operand of `==` or `!=`
    whose other operand is neither a literal nor quoted too: in `country == "USA"` it is a
    field, though almost always meant as text. `text` must be a valid expression."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        tree = _QuotingParser().parse(text).parsed
    found = []
    for node, _ in _walk(tree):
        if node["type"] == "comparator" and node["value"] in ("eq", "ne"):
            left, right = node["children"]
            for one, other in ((left, right), (right, left)):
                if "quoted_at" in one and "quoted_at" not in other and other["type"] != "literal":
                    found.append((one["value"], one["quoted_at"]))
    return sorted(found, key=lambda operand: operand[1])


# How the lexer's unclosed delimiters read in messages.
_DELIMITED = {"'": "raw string", "`": "literal", '"': "quoted identifier"}


def _parse_tree(text: str) -> dict:
    try:
        return Parser().parse(text).parsed
    except jmespath_errors.EmptyExpressionError:
        raise CompileError("empty expression", 1) from None
    except jmespath_errors.IncompleteExpressionError:
        raise CompileError("unexpected end of expression", len(text) + 1) from None
    except jmespath_errors.LexerError as error:
        position = error.lexer_position
        char = text[position]
        if error.message.startswith("Unclosed"):
            reason = f"unterminated {_DELIMITED[char]}"
        elif char in _DELIMITED:
            reason = f"invalid {_DELIMITED[char]}"
        else:
            reason = f"unexpected character {char!r}"
        raise CompileError(reason, position + 1) from None
    except jmespath_errors.ParseError as error:
        raise _syntax_error(error, text) from None


def _syntax_error(error: jmespath_errors.ParseError, text: str) -> CompileError:
    if error.token_type == "EOF":
        return CompileError("unexpected end of expression", len(text) + 1)
    if error.msg.startswith("Quoted identifier"):
        # The parser reports this one at column 1, so find the name itself.
        tokens = list(Lexer().tokenize(text))
        column = _column(
            tokens,
            1,
            lambda i: (
                tokens[i]["type"] == "quoted_identifier" and tokens[i + 1]["type"] == "lparen"
            ),
        )
        return CompileError("a function name cannot be quoted", column)
    if error.msg.startswith("Invalid function name"):
        return CompileError("only a name can be called as a function", error.lex_position + 1)
    if error.token_type == "LITERAL":
        token = "literal"
    elif error.token_type == "QUOTED_IDENTIFIER":
        token = json.dumps(error.token_value)
    else:
        token = repr(str(error.token_value))
    return CompileError(f"unexpected {token}", error.lex_position + 1)


def _column(tokens: list[dict], occurrence: int, matches: Callable[[int], bool]) -> int:
    """Return the column of the `occurrence`-th token for which `matches(index)` holds."""
    starts = [token["start"] for index, token in enumerate(tokens) if matches(index)]
    # A call of a parenthesised name, `(abs)(x)`, has no name token before its `(`.
    return starts[occurrence - 1] + 1 if occurrence <= len(starts) else 1


def _check_literals(text: str, tokens: list[dict]) -> None:
    # The jmespath lexer still reads an invalid JSON literal as a string (a
    # deprecated form); here it is an error, so that a typo cannot pass silently.
    for index, token in enumerate(tokens):
        start = token["start"]
        if token["type"] == "literal" and text[start] == "`":
            raw = text[start + 1 : tokens[index + 1]["start"]].rstrip(" \t\n\r")[:-1]
            try:
                json.loads(raw.replace("\\`", "`"))
            except ValueError:
                raise CompileError("literal is not valid JSON", start + 1) from None


def children_of(node: dict) -> list[dict]:
    """Return the child nodes of a node in the order they appear in the text."""
    children = [child for child in node["children"] if isinstance(child, dict)]
    if node["type"] == "filter_projection":
        left, right, condition = children
        return [left, condition, right]
    return children


def _walk(node: dict, parent: dict | None = None) -> Iterator[tuple[dict, dict | None]]:
    yield node, parent
    for child in children_of(node):
        yield from _walk(child, node)


def _check(tree: dict, tokens: list[dict], functions: Mapping[str, Function]) -> None:
    """Raise CompileError for an unknown function, a wrong arity, a misplaced `&`
    or a zero slice step."""
    calls: Counter[str] = Counter()
    exprefs = slices = 0
    for node, parent in _walk(tree):
        kind = node["type"]
        if kind == "function_expression":
            name = node["value"]
            calls[name] += 1
            column = _column(
                tokens,
                calls[name],
                lambda i, name=name: (
                    tokens[i]["type"] == "unquoted_identifier"
                    and tokens[i]["value"] == name
                    and tokens[i + 1]["type"] == "lparen"
                ),
            )
            _check_call(functions.get(name), name, node["children"], column)
        elif kind == "expref":
            exprefs += 1
            if parent is None or parent["type"] != "function_expression":
                column = _column(tokens, exprefs, lambda i: tokens[i]["type"] == "expref")
                raise CompileError("'&' expressions can only be function arguments", column)
        elif kind == "slice":
            slices += 1
            if node["children"][2] == 0:
                column = _column(tokens, slices, lambda i: _is_slice(tokens, i))
                raise CompileError("slice step cannot be 0", column)


def _check_call(function: Function | None, name: str, args: list[dict], column: int) -> None:
    if function is None:
        raise CompileError(f"unknown function '{name}()'", column)
    if len(args) < function.min_args or (
        function.variadic is False and len(args) > function.max_args
    ):
        raise CompileError(f"{function.arity()}, got {len(args)}", column)
    for index, arg in enumerate(args):
        wanted = function.param(index)
        if arg["type"] == "expref" and "expression" not in wanted.split("|"):
            got = words(wanted.split("|"), "or")
            raise CompileError(f"{function.label(index)} expects {got}, got expression", column)
        if arg["type"] != "expref" and wanted == "expression":
            raise CompileError(f"{function.label(index)} expects expression (&...)", column)


def _is_slice(tokens: list[dict], index: int) -> bool:
    if tokens[index]["type"] != "lbracket":
        return False
    inside = []
    for token in tokens[index + 1 :]:
        if token["type"] == "rbracket":
            return "colon" in inside
        if token["type"] not in ("number", "colon"):
            return False
        inside.append(token["type"])
    return False
