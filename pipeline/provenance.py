"""Which code trained a run: the project's git commit, and a digest of the uncommitted changes to its code.

train.py writes it into every epoch's log line and result.json, and report.py notes a table whose runs were
trained by several versions: an ablation continued after a `git pull` (or an edit) pairs arms trained by other
code, and a change between them that moves results would read as a difference between squeezes. The processes of
a distributed run must run one version (check_same_code). Torch-free.
"""
import functools
import hashlib
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from pipeline.errors import UserError

PROJECT = Path(__file__).resolve().parent.parent
CODE_FOLDERS = ("pipeline", "dataset_prep")  # what a run executes: an edit to README or tests changes no result
COMMIT_CHARACTERS, DIGEST_CHARACTERS = 12, 8


def _git(repo: Path, *arguments: str) -> bytes:
    """git in `repo`, which it trusts whoever owns it: git refuses a checkout of another user ("dubious ownership":
    a lab's shared clone, a container run with --user over the host's checkout), and every run's code went
    unrecorded, without a word. This process runs that checkout's code already, so trusting its git config adds
    nothing to what its owner can do."""
    trusted = f"safe.directory={Path(repo).resolve()}"
    return subprocess.run(["git", "-c", trusted, "-C", str(repo), *arguments], capture_output=True, check=True,
                          timeout=30).stdout


@functools.lru_cache(maxsize=None)
def code_version(repo: Path = PROJECT) -> Optional[str]:
    """'<commit>', or '<commit>+<digest of `git diff HEAD`>' when the code's tracked files (CODE_FOLDERS) were
    changed (the same edits give the same digest; new files git does not track are not seen); None where `repo`
    is not the top of a git checkout (an installed copy inside another repository is not taken for it) or git is
    missing."""
    try:
        if Path(_git(repo, "rev-parse", "--show-toplevel").decode().strip()).resolve() != Path(repo).resolve():
            return None
        commit = _git(repo, "rev-parse", "HEAD").decode().strip()[:COMMIT_CHARACTERS]
        changes = _git(repo, "diff", "HEAD", "--no-ext-diff", "--binary", "--", *CODE_FOLDERS)
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + (f"+{hashlib.sha256(changes).hexdigest()[:DIGEST_CHARACTERS]}" if changes else "")


def other_code_note(recorded: Optional[str], current: Optional[str]) -> Optional[str]:
    """The line a run resumed by other code than its last epoch's says at its start (None: the same, or unknown)."""
    if recorded is None or current is None or recorded == current:
        return None
    return (f"the epochs so far were trained by code {recorded}, and this is {current}: the run goes on with it "
            "(result.json lists both, and report.py says so under the run's table)")


def run_version(result: Dict[str, Any]) -> Optional[str]:
    """The code that trained a finished run, from its result.json: 'A', or 'A then B' for a run resumed by other
    code; None where it recorded none (trained before versions were recorded, or from a copy without .git)."""
    code = result.get("code")
    if isinstance(code, list) and code and all(isinstance(version, str) for version in code):
        return " then ".join(code)
    return None


def finished_by_other_code_note(results: List[Dict[str, Any]], current: Optional[str]) -> Optional[str]:
    """The line an ablation continued by other code says at its start, naming the versions its finished runs
    were trained by (None: the same code, or unknown)."""
    others = [version for version in map(run_version, results) if version not in (None, current)]
    if current is None or not others:
        return None
    were = "was" if len(others) == 1 else "were"
    return (f"{len(others)} of the {len(results)} finished runs {were} trained by other code "
            f"({', '.join(sorted(set(others)))}; this is {current}): the report says so under its table, since a "
            "change that moves results reads as a difference between arms")


def check_same_code(versions: List[Tuple[str, Optional[str]]]) -> None:
    """Refuse a distributed run whose processes ((host, code version) by rank) run other code: a node with
    another checkout trained in lockstep with the rest without a word (processes that know no version are not
    compared)."""
    known = [(rank, host, version) for rank, (host, version) in enumerate(versions) if version is not None]
    other = next(((rank, host, version) for rank, host, version in known if version != known[0][2]), None)
    if other is not None:
        rank, host, version = other
        raise UserError(f"the processes run other code: rank {known[0][0]} on {known[0][1]} runs {known[0][2]}, "
                        f"rank {rank} on {host} runs {version}; check out the same commit (and changes) on every "
                        "node")
