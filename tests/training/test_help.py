"""`--help` of the training commands: every option explained, every default shown."""

from __future__ import annotations

import argparse

import pytest

from verydeep.cli import build_parser

COMMANDS = ("train", "export", "import-torchvision", "make-shapes")


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return commands.choices[name]


def _help_of(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    formatter = parser._get_formatter()
    return " ".join(formatter._expand_help(action).split())


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_has_help_and_shows_its_default(command: str) -> None:
    parser = _subparser(command)
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = action.option_strings[0] if action.option_strings else action.dest
        assert action.help, f"{command} {name} has no help"
        is_switch = action.nargs == 0
        if action.option_strings and action.default is not None and not is_switch:
            assert "default" in _help_of(parser, action), f"{command} {name}: no default shown"


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        ("make-shapes", ["images per class (default: 500)", "same images (default: 0)"]),
        ("train", ["(default: runs/train)", "(default: 4096)", "(default: 74)",
                   "(default: normal; glorot below --width 1)", "(default: 0.5; 0 below --width"]),
        ("export", ["model store directory ($VERYDEEP_MODEL_STORE, else ./model_store)"]),
        ("import-torchvision", ["($VERYDEEP_MODEL_STORE, else ./model_store)"]),
    ],
)  # fmt: skip
def test_help_text_names_the_defaults(command: str, shown: list[str], monkeypatch) -> None:
    monkeypatch.delenv("VERYDEEP_MODEL_STORE", raising=False)
    text = " ".join(_subparser(command).format_help().split())
    for phrase in shown:
        assert phrase in text, phrase
