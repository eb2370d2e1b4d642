"""Parse README.md the way a newcomer reads it: fenced code blocks, and the shell commands in them.

Used by tests/test_readme.py (kept apart so the parsing is unit-tested on its own).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_FENCE = re.compile(r"^(```+)\s*([\w+-]*)\s*$")


@dataclass(frozen=True)
class Block:
    lang: str  # "" for a plain ``` block (a diagram, a tree)
    text: str
    line: int  # 1-based line of the opening fence

    @property
    def id(self) -> str:
        return f"{self.lang or 'plain'}@L{self.line}"


def fenced_blocks(markdown: str) -> list[Block]:
    """Every fenced code block, in order. An unclosed fence is an error."""
    blocks: list[Block] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang, start = m.group(1), m.group(2).lower(), i + 1
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].strip() != fence:
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise ValueError(f"README.md line {start}: unclosed ``` fence")
        blocks.append(Block(lang, "\n".join(body) + "\n", start))
        i += 1
    return blocks


def shell_commands(text: str) -> list[str]:
    """The commands of a shell snippet, one string each, as bash would read them.

    Backslash-continued lines are joined; a quoted string may span lines (its newline is
    kept); a ``# comment`` outside quotes is dropped; blank lines are skipped.
    """
    commands: list[str] = []
    current = ""
    quote = ""  # the open quote character, if any
    for line in text.splitlines():
        out = []
        i = 0
        continued = False
        while i < len(line):
            c = line[i]
            if quote:
                out.append(c)
                if c == "\\" and quote == '"' and i + 1 < len(line):
                    out.append(line[i + 1])
                    i += 1
                elif c == quote:
                    quote = ""
            elif c in "'\"":
                quote = c
                out.append(c)
            elif c == "\\":
                if i == len(line) - 1:
                    continued = True  # line continuation: join with the next line
                else:
                    out.append(c + line[i + 1])
                    i += 1
            elif c == "#" and (not out or out[-1][-1].isspace()):
                break  # a comment runs to the end of the line
            else:
                out.append(c)
            i += 1
        current += "".join(out)
        if quote:
            current += "\n"
        elif continued:
            current = current.rstrip() + " "
        else:
            if current.strip():
                commands.append(current.strip())
            current = ""
    if quote or current.strip():
        raise ValueError(f"unterminated shell command: {current!r}")
    return commands
