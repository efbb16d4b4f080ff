"""The shell commands README.md shows in its code blocks, as tests/test_readme_commands.py runs them.

A code block is a fenced block (```bash, ```sh, ```shell, ```console or no language) or an indented block (four
spaces, after a blank line, outside a list). Each command is one logical line: `\\` continuations joined, `#`
comments dropped, whitespace collapsed; a `$ ` prompt is removed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SHELL = {"", "bash", "sh", "shell", "console", "zsh"}


@dataclass(frozen=True)
class Command:
    line: int  # 1-based line in README.md where the command starts
    text: str  # normalised: one line, single spaces, no comment


def _strip_comment(line: str) -> str:
    """The line without a `#` comment (a `#` at the start or after whitespace, outside quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def code_blocks(text: str) -> list[tuple[int, list[str]]]:
    """(first line number, lines) of every shell code block: fenced ones of a shell language (or none) and
    indented ones."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = re.match(r"^(\s*)(```+|~~~+)\s*([\w+-]*)", lines[i])
        if m:
            fence, lang = m[2], m[3].lower()
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith(fence):
                j += 1
            if lang in SHELL:
                blocks.append((i + 2, lines[i + 1:j]))
            i = j + 1
            continue
        prev = lines[i - 1] if i else ""
        in_list = bool(re.match(r"^\s*([-*+]|\d+\.)\s", prev))
        if lines[i].startswith("    ") and lines[i].strip() and not prev.strip() and not in_list:
            j = i
            while j < len(lines) and (lines[j].startswith("    ") or not lines[j].strip()):
                j += 1
            while j > i and not lines[j - 1].strip():
                j -= 1
            blocks.append((i + 1, [ln[4:] for ln in lines[i:j]]))
            i = j
            continue
        i += 1
    return blocks


def commands(text: str) -> list[Command]:
    """Every command of every shell code block, in README order."""
    out = []
    for first, block in code_blocks(text):
        pending, start = "", None
        for k, raw in enumerate(block):
            line = _strip_comment(raw).rstrip()
            if not line.strip() and not pending:
                continue
            if start is None:
                start = first + k
            cont = line.endswith("\\")
            pending += " " + (line[:-1] if cont else line)
            if cont:
                continue
            cmd = " ".join(pending.split())
            cmd = cmd[2:] if cmd.startswith("$ ") else cmd
            if cmd:
                out.append(Command(start, cmd))
            pending, start = "", None
        if pending.strip():
            out.append(Command(start, " ".join(pending.split())))
    return out


def readme_commands(readme: Path) -> list[Command]:
    return commands(readme.read_text())
