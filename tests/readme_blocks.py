"""The READMEs' code blocks as tests (tests/test_readme.py) and as a script (benchmarks/newcomer.sh).

Every fenced block of README.md and services/*/README.md names its language, and every ``sh`` and
``python`` block has a marker, an HTML comment on the line before its fence:

    <!-- doc: not run — needs Docker -->
    <!-- doc: run -->                                     alone, in a temporary folder of its own
    <!-- doc: run in training -->                         the group "training": its blocks run in
                                                          document order in one temporary folder
    <!-- doc: run in training; output -->                 and what the block shows as output must match
    <!-- doc: run in training; with `--epochs 30` → `--epochs 1`, `--size 320` → `--size 64` -->
    <!-- doc: run in quickstart; needs grpcurl -->             skipped where grpcurl is not installed
    <!-- doc: run in README.md#quickstart -->                 a group of another document (after its blocks)

``with`` lists the only changes made to the block before it runs (tiny settings, a free port): each
left side must occur in the block, and every occurrence is replaced. ``$PORT``, ``$PORT2`` and
``$METRICS_PORT`` in a right side are free 127.0.0.1 ports of the group. ``output``: in a shell
block, the comment lines right after a command are lines of its output; in a Python block, the
comment ending a ``print(...)`` line is the line it prints. They must appear in the output in that
order (each contained in one line); ``…`` stands for text that varies.

A group's folder has ``.venv`` (a link to this interpreter's environment), so ``.venv/bin/slimyolo``
runs as written; ``slimyolo`` and ``python`` are that environment's too. Shell blocks run with
``bash`` under ``set -e -o pipefail``: the block fails at its first failing command, which the
failure names by README line. What a block starts in the background (``cmd &``) is stopped by PID
(SIGTERM, then SIGKILL) after the group's last block. Python blocks run as scripts in the folder.

Why not a tool from PyPI (checked: pytest-codeblocks 0.18.0, sybil 10.1.0, pytest-examples 0.0.18):
pytest-codeblocks runs shell and Python blocks with skip and expected-output markers, but each block
in pytest's working folder, without substitutions, and expects output as a block of its own; sybil
has no shell evaluator (its parser hooks would hold the same code as this module, plus a dependency);
pytest-examples runs Python only. None shares a folder between the blocks of a section, checks output
shown as ``#`` comments, or stops the servers a block starts. This module needs nothing but pytest.

``python tests/readme_blocks.py script README.md#quickstart`` prints that group's blocks as one bash
script, without substitutions: what a reader copying them in order runs (benchmarks/newcomer.sh).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from seaweed import free_ports

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", *sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("services/*/README.md")))
CODE_LANGUAGES = {"sh": "sh", "bash": "sh", "shell": "sh", "console": "sh", "python": "python", "py": "python"}
MARKER = re.compile(r"^\s*<!--\s*doc:\s*(?P<body>.*?)\s*-->\s*$")
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w+-]*)\s*$")
SUBSTITUTION = re.compile(r"`(?P<old>[^`]+)`\s*→\s*`(?P<new>[^`]*)`")
ELLIPSIS = "…"
FAILED_AT = "__doc_failed_at_line__"


@dataclass
class Block:
    doc: str  # path relative to the repository root
    line: int  # the opening fence's line (1-based)
    lang: str  # as written after the fence
    code: str
    marker: str | None  # the marker's text after "doc:", None when there is none
    marker_line: int | None = None

    @property
    def kind(self) -> str | None:
        return CODE_LANGUAGES.get(self.lang)

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"

    @property
    def clauses(self) -> list[str]:
        """``run ...; output; with ...`` split at ``;``; ``not run — why`` is one clause (why may hold ``;``)."""
        body = (self.marker or "").strip()
        if body.startswith("not run"):
            return [body]
        return [c.strip() for c in body.split(";") if c.strip()]

    @property
    def runs(self) -> bool:
        return bool(self.clauses) and re.fullmatch(r"run(\s+in\s+[\w./#-]+)?", self.clauses[0]) is not None

    @property
    def not_run_reason(self) -> str | None:
        match = re.fullmatch(r"not run\s*[—:-]+\s*(?P<why>.+)", self.clauses[0]) if self.clauses else None
        return match.group("why").strip() if match else None

    @property
    def group(self) -> str:
        match = re.fullmatch(r"run\s+in\s+([\w./#-]+)", self.clauses[0]) if self.clauses else None
        if not match:
            return f"{self.doc}:{self.line}"
        return match.group(1) if "#" in match.group(1) else f"{self.doc}#{match.group(1)}"

    @property
    def checks_output(self) -> bool:
        return "output" in self.clauses[1:]

    @property
    def needs(self) -> list[str]:
        """Programs the block runs that the machine may lack (``needs grpcurl``): without them it is skipped."""
        return [name for c in self.clauses[1:] if c.startswith("needs ") for name in c[len("needs "):].split()]

    @property
    def substitutions(self) -> list[tuple[str, str]]:
        return [(m.group("old"), m.group("new")) for c in self.clauses[1:] if c.startswith("with ")
                for m in SUBSTITUTION.finditer(c)]

    def problems(self) -> list[str]:
        """What is wrong with the block's marker (empty when nothing)."""
        if self.kind is None:
            return []
        if self.marker is None:
            return [f"{self.where}: a {self.lang} block without a marker (<!-- doc: run ... --> or "
                    f"<!-- doc: not run — why -->) on the line before its fence"]
        if not self.runs and self.not_run_reason is None:
            return [f"{self.doc}:{self.marker_line}: the marker must start with 'run', 'run in GROUP' or "
                    f"'not run — WHY', got {self.clauses[0] if self.clauses else ''!r}"]
        found = []
        for clause in self.clauses[1:]:
            if clause == "output" or re.fullmatch(r"needs( [\w.+-]+)+", clause):
                continue
            if not clause.startswith("with ") or not SUBSTITUTION.search(clause):
                found.append(f"{self.doc}:{self.marker_line}: unknown marker clause {clause!r} (known: output, "
                             f"needs PROGRAM, with `OLD` → `NEW`, ...)")
        for old, _ in self.substitutions:
            if old not in self.code:
                found.append(f"{self.doc}:{self.marker_line}: `{old}` (a substitution) does not occur in the block "
                             f"of line {self.line}")
        return found

    def prepared(self, variables: dict[str, str]) -> str:
        code = self.code
        for old, new in self.substitutions:
            for name, value in sorted(variables.items(), key=lambda kv: -len(kv[0])):
                new = new.replace(f"${name}", value)
            code = code.replace(old, new)
        return code

    def expected_output(self) -> list[tuple[int, str]]:
        """(README line, text) of every output line the block shows, when it is marked ``output``."""
        if not self.checks_output:
            return []
        found: list[tuple[int, str]] = []
        lines = self.code.split("\n")
        if self.kind == "python":
            for i, text in enumerate(lines):
                match = re.match(r"^\s*print\(.*\)\s*#\s?(?P<out>.*)$", text)
                if match:
                    found.append((self.line + 1 + i, match.group("out").strip()))
            return found
        after_command = False
        for i, text in enumerate(lines):
            stripped = text.strip()
            if stripped.startswith("#"):
                if after_command:
                    found.append((self.line + 1 + i, stripped[1:].strip()))
            else:
                after_command = bool(stripped)
        return found


def read_blocks(doc: str, root: Path = ROOT) -> list[Block]:
    """Every fenced block of ``doc`` with the marker on the line before it."""
    lines = (root / doc).read_text(encoding="utf-8").split("\n")
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent = opening.group("indent")
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        body = [text[len(indent):] if text.startswith(indent) else text for text in lines[i + 1:j]]
        marker, marker_line = None, None
        k = i - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        if k >= 0 and (found := MARKER.match(lines[k])):
            marker, marker_line = found.group("body"), k + 1
        blocks.append(Block(doc, i + 1, opening.group("lang"), "\n".join(body), marker, marker_line))
        i = j + 1
    return blocks


def all_blocks(root: Path = ROOT) -> list[Block]:
    return [b for doc in DOCS for b in read_blocks(doc, root)]


class BlockFailed(AssertionError):
    pass


@dataclass
class Group:
    """One temporary folder, its free ports and what its blocks left running."""

    folder: Path
    variables: dict[str, str] = field(default_factory=dict)
    pids: list[int] = field(default_factory=list)
    failed: str | None = None  # the block that failed, for the blocks after it

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        venv = self.folder / ".venv"
        if not venv.exists():
            venv.symlink_to(Path(sys.prefix))
        port, port2, metrics = free_ports(3)
        self.variables.update(PORT=str(port), PORT2=str(port2), METRICS_PORT=str(metrics))

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLIMYOLO_")}
        env["PATH"] = f"{Path(sys.prefix) / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env.setdefault("OMP_NUM_THREADS", "2")
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def run(self, block: Block, timeout: float = 420) -> str:
        """Run the block; its output (stdout and stderr), or BlockFailed naming the README line."""
        code = block.prepared(self.variables)
        stem = f"{Path(block.doc).name}-L{block.line}"
        log = self.folder / f".doc-{stem}.log"
        pids = self.folder / ".doc-pids"
        if block.kind == "sh":
            script = self.folder / f".doc-{stem}.sh"
            # Line 1 is the prelude, so line n + 1 of the script is line n of the block.
            script.write_text(f"set -eE -o pipefail; trap 'echo \"{FAILED_AT} $LINENO\" >&2' ERR; "
                              f"trap 'jobs -p >> {shlex.quote(str(pids))}' EXIT\n{code}\n")
            argv = ["bash", str(script)]
        else:
            script = self.folder / f".doc-{stem}.py"
            script.write_text(code + "\n")
            argv = [sys.executable, str(script)]
        started, cpu = time.monotonic(), _children_cpu()
        with open(log, "wb") as out:
            try:
                proc = subprocess.run(argv, cwd=self.folder, env=self.env(), stdin=subprocess.DEVNULL, stdout=out,
                                      stderr=subprocess.STDOUT, timeout=timeout, start_new_session=False)
                status = proc.returncode
            except subprocess.TimeoutExpired:
                status = None
        if pids.exists():
            self.pids += [int(p) for p in pids.read_text().split() if p.strip().isdigit() and int(p) not in self.pids]
            pids.unlink()
        output = log.read_text(errors="replace")
        if os.environ.get("DOC_TIMINGS"):  # where to append "README.md:123 wall_s cpu_s" (benchmarking the tests)
            with open(os.environ["DOC_TIMINGS"], "a") as f:
                f.write(f"{block.where} {time.monotonic() - started:.1f} {_children_cpu() - cpu:.1f}\n")
        if status != 0:
            raise BlockFailed(self._failure(block, code, output, status, time.monotonic() - started))
        self._check_output(block, output)
        return output

    def _failure(self, block: Block, code: str, output: str, status: int | None, seconds: float) -> str:
        lines = code.split("\n")
        where, command = block.where, ""
        if block.kind == "sh":
            found = re.findall(rf"{FAILED_AT} (\d+)", output)
            if found:
                n = int(found[-1]) - 1  # the script's line n + 1 is the block's line n
                if 1 <= n <= len(lines):
                    first = n
                    while first > 1 and lines[first - 2].rstrip().endswith("\\"):
                        first -= 1  # bash names the last line of a continued command
                    where = f"{block.doc}:{block.line + first}"
                    command = "\n".join(lines[first - 1:n])
            output = re.sub(rf"{FAILED_AT} \d+\n?", "", output)
        else:
            found = re.findall(rf'File "[^"]*\.doc-{re.escape(Path(block.doc).name)}-L{block.line}\.py", line (\d+)',
                               output)
            if found:
                n = int(found[-1])
                where = f"{block.doc}:{block.line + n}"
                command = lines[n - 1] if 1 <= n <= len(lines) else ""
            output = re.sub(rf'File "[^"]*\.doc-{re.escape(Path(block.doc).name)}-L{block.line}\.py", line (\d+)',
                            lambda m: f'File "{block.doc}", line {block.line + int(m.group(1))}', output)
        how = "ran out of time" if status is None else f"exited with status {status}"
        tail = "\n".join(output.rstrip().split("\n")[-30:])
        shown = f"\n  {command}" if command else ""
        subs = "".join(f"\n  (run with `{old}` → `{new}`)" for old, new in block.substitutions)
        return (f"{where}: the {block.lang} block of line {block.line} {how} after {seconds:.1f} s at{shown}{subs}\n"
                f"--- its output (last 30 lines) ---\n{tail}")

    def _check_output(self, block: Block, output: str) -> None:
        got = [line.strip() for line in output.split("\n")]
        position = 0
        for line_no, expected in block.expected_output():
            pattern = re.compile(".*?".join(re.escape(part) for part in expected.split(ELLIPSIS)))
            for i in range(position, len(got)):
                if pattern.search(got[i]):
                    position = i + 1
                    break
            else:
                shown = "\n".join(got[-30:])
                raise BlockFailed(f"{block.doc}:{line_no}: the output shown there is not what the block printed\n"
                                  f"  shown:   {expected}\n--- what it printed (last 30 lines) ---\n{shown}")

    def stop(self) -> list[str]:
        """SIGTERM to what the blocks left running, SIGKILL after 20 s; the PIDs that needed it."""
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        killed, deadline = [], time.monotonic() + 20
        for pid in self.pids:
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
                killed.append(str(pid))
        self.pids.clear()
        return killed


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _alive(pid: int) -> bool:
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)
        if finished == pid:
            return False
    except ChildProcessError:
        pass  # not our child (bash started it): ask the kernel
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie whose parent (the block's bash) is gone waits for init: it is stopped
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def script(group: str, root: Path = ROOT) -> str:
    """The blocks of ``group`` (``README.md#quickstart``), unchanged, as one bash script run from the folder they
    expect: shell blocks as they are, Python blocks through ``.venv/bin/python``."""
    doc, _, name = group.partition("#")
    # What the blocks start in the background (the server) is stopped when the script ends, however it ends.
    parts = ["set -e -o pipefail", "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT"]
    for block in read_blocks(doc, root):
        if block.runs and block.group == group:
            parts.append(f"echo '== {block.where}'")
            code = block.code
            if block.kind == "python":
                code = f".venv/bin/python - <<'DOC_PYTHON_{block.line}'\n{code}\nDOC_PYTHON_{block.line}"
            for program in block.needs:
                code = (f"if command -v {program} >/dev/null; then\n{code}\n"
                        f"else echo '{block.where}: skipped, {program} is not installed'; fi")
            parts.append(code)
    if len(parts) == 1:
        raise SystemExit(f"no block runs in group {name!r} of {doc}")
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "script":
        raise SystemExit("usage: python tests/readme_blocks.py script DOC#GROUP   (e.g. README.md#quickstart)")
    sys.stdout.write(script(sys.argv[2]))
