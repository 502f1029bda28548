"""Every ``hepascope ...`` and ``python -m hepascope...`` command the README shows parses with
today's argument parsers, so the README never documents a flag that does not exist or leaves
out a required one. Nothing runs: ``ArgumentParser.parse_args`` is intercepted right after
it parsed (or refused) the command line.

Where commands are found: lines of fenced code blocks, and inline code spans. A command in
a code block or alone in a table cell is checked whole (its required arguments included);
a span inside a sentence (``hepascope run --record DIR`` names one option) is checked for
its options and values only. Synopsis notation is expanded to one concrete command: an
optional ``[...]`` part is kept, the first of ``a | b`` alternatives is taken, a standalone
``...`` dropped, and an upper-case placeholder (``N``, ``NAME``) given to an option that
checks its value becomes a valid value (``1``, the first choice)."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parents[1]
START = re.compile(r"^(hepascope(\s|$)|python -m hepascope\.|torchrun .*-m hepascope\.)")
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*$")
_parse_args = argparse.ArgumentParser.parse_args
_LENIENT = False  # set while a span inside a sentence is checked


@dataclass(frozen=True)
class Command:
    text: str
    line: int
    whole: bool  # a code block line or a whole table cell: required arguments checked too


def readme_commands(text: str) -> list[Command]:
    """The commands in ``text`` (markdown), in order."""
    out: list[Command] = []
    in_block = False
    lines = text.splitlines()
    for n, line in enumerate(lines, 1):
        if line.lstrip().startswith("```"):
            in_block = not in_block
            continue
        if in_block:
            for part in re.split(r"&&|;", line.split(" # ", 1)[0].rstrip(" \\")):
                if START.match(part.strip()):
                    out.append(Command(part.strip(), n, whole=True))
            continue
        for m in re.finditer(r"`([^`]+)`", line):
            span = m.group(1).strip()
            if START.match(span) and " " in span:  # not the bare name "hepascope"
                cell = re.search(r"\|\s*`" + re.escape(m.group(1)) + r"`\s*\|", line)
                out.append(Command(span, n, whole=bool(cell)))
    return out


def _expand(text: str) -> list[str]:
    """Synopsis -> one concrete argv (before placeholders are filled)."""
    text = text.replace("\\|", "|")
    text = re.sub(r"\[([^\[\]]*)\]", lambda m: m.group(1).split(" | ")[0], text)
    text = re.sub(r"(\S+)(?: [/|] \S+)+", r"\1", text)  # "images / clips": the first
    return [t.split("|")[0] if "|" in t and not t.startswith("|") else t
            for t in shlex.split(text) if t != "..."]


class _Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser, error: str | None) -> None:
        super().__init__(error)
        self.parser, self.error = parser, error


def _strict(parser: argparse.ArgumentParser, lenient: bool) -> None:
    """No abbreviations (the README spells every option in full: ``--record`` must not pass
    as a prefix of ``--recording``) in ``parser`` and its subcommands; with ``lenient``,
    every option and positional made optional (a span in a sentence names some options,
    not a whole command)."""
    parser.allow_abbrev = False
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            a.required = a.required and not lenient
            for child in a.choices.values():
                _strict(child, lenient)
        elif not lenient:
            continue
        elif a.required:
            a.required = False
        elif a.nargs is None and not a.option_strings:
            a.nargs = "?"


def _intercept(self: argparse.ArgumentParser, args: Any = None, namespace: Any = None) -> Any:
    _strict(self, _LENIENT)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            _parse_args(self, args, namespace)
    except SystemExit as e:
        if e.code:
            lines = err.getvalue().strip().splitlines()
            raise _Parsed(self, lines[-1] if lines else f"exit {e.code}") from None
    raise _Parsed(self, None)


def _main_and_argv(argv: list[str]) -> tuple[Any, list[str]]:
    if argv[0] == "hepascope":
        module, rest = "hepascope.cli", argv[1:]
    else:
        i = argv.index("-m")
        module, rest = argv[i + 1], argv[i + 2:]
    return importlib.import_module(module).main, rest


def _subparser(root: argparse.ArgumentParser, argv: list[str]) -> Iterator[
        tuple[str, argparse.ArgumentParser]]:
    """Each token with the parser that reads it (descending into subcommands)."""
    parser = root
    for tok in argv:
        yield tok, parser
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction) and tok in a.choices:
                parser = a.choices[tok]


def _fill_placeholders(root: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    out = list(argv)
    pairs = list(_subparser(root, argv))
    for i, (tok, parser) in enumerate(pairs[:-1]):
        action = parser._option_string_actions.get(tok)
        value = argv[i + 1]
        if action is None or action.nargs is not None or not PLACEHOLDER.match(value):
            continue
        if action.choices:
            out[i + 1] = str(next(iter(action.choices)))
        elif action.type not in (None, str, Path):
            out[i + 1] = "1"
    return out


def check(cmd: Command) -> str | None:
    """None when ``cmd`` parses, else the parser's complaint."""
    global _LENIENT
    main, argv = _main_and_argv(_expand(cmd.text))
    _LENIENT = not cmd.whole
    with mock.patch.object(argparse.ArgumentParser, "parse_args", _intercept):
        try:
            main(["--help-never-a-flag"])  # only to get the parser
        except _Parsed as p:
            root = p.parser
        try:
            main(_fill_placeholders(root, argv))
        except _Parsed as p:
            return p.error
    return "the command's main returned without parsing its arguments"


def problems(text: str) -> list[str]:
    return [f"README.md:{c.line}: `{c.text}`: {err}" for c in readme_commands(text)
            if (err := check(c))]


def test_every_readme_command_parses() -> None:
    text = (ROOT / "README.md").read_text()
    cmds = readme_commands(text)
    print(f"\n{len(cmds)} commands ({sum(c.whole for c in cmds)} checked whole)")
    assert len(cmds) >= 40  # the extraction itself still finds them
    bad = problems(text)
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(("readme", "complaint"), [
    ("```bash\nhepascope bench --quick --no-such-flag\n```\n", "unrecognized arguments"),
    ("| `python -m hepascope.bench.live --seconds 60` | x |\n", "are required: --source"),
    ("Run `hepascope run --record DIR --speeed 2` here.\n", "unrecognized arguments"),
    ("| `hepascope run --source S --model M --engine auto\\|cuda` |\n", None),
    ("| `hepascope run --source S --model M --engine cuda\\|auto` |\n", "invalid choice"),
])
def test_a_flag_that_does_not_exist_is_caught(readme: str, complaint: str | None) -> None:
    """A README made here with a bogus flag, a missing required option, a bad choice."""
    found = problems(readme)
    print(found)
    if complaint is None:
        assert not found
    else:
        assert len(found) == 1 and complaint in found[0], found


def test_every_python_m_tool_is_a_subcommand_or_the_readme_says_why_not() -> None:
    text = (ROOT / "README.md").read_text()
    tools = set(re.findall(r"python -m (hepascope\.[a-z_.]+)", text)) - {"hepascope.cli"}
    why = text.split("<!-- python-m-tools -->", 1)[1].split("\n\n", 1)[0]
    assert len(tools) >= 5 and all(f"`{t}" in why for t in tools), tools
