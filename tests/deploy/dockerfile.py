"""A small Dockerfile reader for the deploy tests: instructions, stages and the image's ENV.

Enough of the syntax for ``deploy/Dockerfile``: comments, line continuations, the JSON and
shell forms, ``KEY=value`` lists (quoted values allowed) and ``${ARG}`` substitution from ARG
defaults. Not a general parser.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "deploy" / "Dockerfile"


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int

    def json_args(self) -> list[str] | None:
        """The exec (JSON array) form's words, or None for the shell form."""
        text = self.args
        for flag in re.findall(r"^(?:--\S+\s+)*", text)[:1]:
            text = text[len(flag) :]
        if not text.startswith("["):
            return None
        return json.loads(text)


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for word in shlex.split(instruction.args):
                key, sep, value = word.partition("=")
                assert sep, f"line {instruction.line}: ENV without = ({instruction.args!r})"
                values[key] = re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m[1], f"${m[1]}"), value)
        return values


def instructions(path: Path = DOCKERFILE) -> list[Instruction]:
    found: list[Instruction] = []
    buffer, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        stripped = raw.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if buffer and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction are dropped
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        buffer += stripped
        keyword, _, args = buffer.partition(" ")
        found.append(Instruction(keyword.upper(), args.strip(), start))
        buffer = ""
    assert not buffer, "the Dockerfile ends inside a line continuation"
    return found


def stages(path: Path = DOCKERFILE) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages in order) with ``${ARG}`` expanded in FROM lines."""
    args: dict[str, str] = {}
    result: list[Stage] = []
    for instruction in instructions(path):
        if instruction.keyword == "FROM":
            words = instruction.args.split()
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m[1], ""), words[0])
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else None
            result.append(Stage(base, name))
        elif not result and instruction.keyword == "ARG":
            key, _, value = instruction.args.partition("=")
            args[key.strip()] = value.strip()
        elif result:
            result[-1].instructions.append(instruction)
    return args, result
