"""The READMEs run: every sh and python block of README.md and services/*/README.md is run here on the
settings its marker states, or is marked as not run with the reason (tests/readme_blocks.py says how).

A block fails the test when one of its commands fails (the message names the README line) or when the
output the README shows no longer matches. Blocks of one group run in document order in one folder; a
group whose block failed skips the blocks after it, naming the one that failed.
"""

from __future__ import annotations

import shutil

import pytest
from readme_blocks import DOCS, ROOT, Block, BlockFailed, Group, all_blocks, read_blocks

BLOCKS = all_blocks()
RUN = [b for b in BLOCKS if b.runs]


def _ordered(blocks: list[Block]) -> list[Block]:
    """Group by group (in the order groups first appear), blocks of a group in document order."""
    first: dict[str, int] = {}
    for i, block in enumerate(blocks):
        first.setdefault(block.group, i)
    return sorted(blocks, key=lambda b: (first[b.group], blocks.index(b)))


ORDERED = _ordered(RUN)
LAST_OF_GROUP = {b.group: b for b in ORDERED}


def test_every_block_is_marked():
    """Every fence names its language; every sh/python block says whether and how it runs."""
    problems = []
    for doc in DOCS:
        for block in read_blocks(doc):
            if not block.lang:
                problems.append(f"{block.where}: a fenced block without a language (sh, python, text, yaml, ...)")
            problems += block.problems()
    assert not problems, "\n".join(problems)
    assert RUN, "no README block runs"


@pytest.fixture(scope="module")
def groups(tmp_path_factory):
    made: dict[str, Group] = {}

    def get(block: Block) -> Group:
        if block.group not in made:
            name = block.group.replace("/", "-").replace("#", "-").replace(":", "-")
            made[block.group] = Group(tmp_path_factory.mktemp(name))
        return made[block.group]

    yield get
    for group in made.values():
        group.stop()


def _id(block: Block) -> str:
    return f"{block.where}-{block.group.split('#')[1] if '#' in block.group else 'alone'}"


@pytest.mark.parametrize("block", ORDERED, ids=[_id(b) for b in ORDERED])
def test_block(block: Block, groups):
    missing = [name for name in block.needs if shutil.which(name) is None]
    if missing:
        pytest.skip(f"{block.where}: needs {', '.join(missing)}, which is not installed")
    group = groups(block)
    if group.failed:
        pytest.skip(f"{group.failed} failed before it in the same group")
    failure = None
    try:
        group.run(block)
    except BlockFailed as exc:
        group.failed, failure = block.where, str(exc)
    finally:
        if LAST_OF_GROUP[block.group] is block or group.failed:
            killed = group.stop()
            assert not killed, f"{block.where}: what the group started did not stop on SIGTERM (killed {killed})"
    if failure:
        pytest.fail(failure, pytrace=False)


def test_the_readme_names_its_tools():
    """The docs of the doc tests: the README says how blocks are marked and where the runner is."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "tests/readme_blocks.py" in text and "tests/test_readme.py" in text
