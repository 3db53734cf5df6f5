"""Help texts of the command-line tools: program names, plain text, a help line per option,
and the README's lists of pipeline modules against the registries."""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
#: module of each tool -> its console-script name (setup.cfg)
TOOLS = {"train": "strkit-train", "eval": "strkit-eval", "recognize": "strkit-recognize",
         "create_lmdb": "strkit-create-lmdb", "synth": "strkit-synth", "search": "strkit-search",
         "export": "strkit-export", "bench": "strkit-bench", "rectify": "strkit-rectify",
         "curate": "strkit-curate", "models": "strkit-models", "tune": "strkit-tune"}
RST = re.compile(r"``|:(?:func|class|mod|data|meth|attr):`|::\s*$", re.M)


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """``parser`` and every sub-parser below it."""
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                found += _parsers(sub)
    return found


def test_console_scripts_match_tools() -> None:
    text = (Path(__file__).resolve().parents[1] / "setup.cfg").read_text()
    assert {f"{name} = strkit.cli.{module}:main" for module, name in TOOLS.items()} <= \
        {line.strip() for line in text.splitlines()}


@pytest.mark.parametrize("module", sorted(TOOLS))
def test_help_texts(module: str) -> None:
    parser = importlib.import_module(f"strkit.cli.{module}").build_parser()
    assert parser.prog == TOOLS[module]
    for p in _parsers(parser):
        for text in (p.description or "", p.epilog or ""):
            assert not RST.search(text), f"{p.prog}: reStructuredText markup in {text!r}"
        for action in p._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            assert action.help and action.help.strip(), f"{p.prog}: no help for {action.option_strings or action.dest}"
            assert not RST.search(action.help), f"{p.prog}: reStructuredText markup in {action.help!r}"


def _readme_stage_names() -> dict[str, set[str]]:
    """``stage -> names`` from the README's pipeline table (``| backbone | `vgg` (CRNN), ... |``)."""
    rows = {}
    for line in README.read_text().splitlines():
        m = re.match(r"\|\s*(rectifier|backbone|sequence|decoder)\s*\|(.*)\|\s*$", line)
        if m:
            rows[m.group(1)] = set(re.findall(r"`([a-z0-9_]+)`", m.group(2)))
    return rows


def test_readme_lists_the_registered_modules() -> None:
    from strkit.models.registry import BACKBONES, DECODERS, RECTIFIERS, SEQUENCES

    readme = _readme_stage_names()
    assert set(readme) == {"rectifier", "backbone", "sequence", "decoder"}
    for registry in (RECTIFIERS, BACKBONES, SEQUENCES, DECODERS):
        # Only the entries the model layer registers: tools/search.py adds 'supernet' (strkit.nas) when it runs.
        names = {n for n in registry.names() if registry.get(n).__module__.startswith("strkit.models")}
        assert readme[registry.kind] == names, f"README's {registry.kind} list"


@pytest.mark.parametrize("module", sorted(TOOLS))
def test_every_tool_runs_as_a_module(module: str) -> None:
    """Each tool module ends in a ``__main__`` guard, so ``python -m strkit.cli.<tool>`` runs it."""
    path = Path(__file__).resolve().parents[1] / "strkit" / "cli" / f"{module}.py"
    assert 'if __name__ == "__main__":\n    raise SystemExit(main())' in path.read_text()


def test_python_m_train_help() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "strkit.cli.train", "--help"], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert out.startswith("usage: strkit-train")
