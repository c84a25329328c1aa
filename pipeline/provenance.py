"""Which code trained a run: the project's git commit, and a digest of its uncommitted changes to tracked files.

train.py writes it into every epoch's log line and result.json, and report.py notes a table whose runs were
trained by several versions: an ablation continued after a `git pull` (or an edit) pairs arms trained by other
code, and a change between them that moves results would read as a difference between squeezes. Torch-free.
"""
import functools
import hashlib
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Optional

PROJECT = Path(__file__).resolve().parent.parent
COMMIT_CHARACTERS, DIGEST_CHARACTERS = 12, 8


def _git(repo: Path, *arguments: str) -> bytes:
    return subprocess.run(["git", "-C", str(repo), *arguments], capture_output=True, check=True, timeout=30).stdout


@functools.lru_cache(maxsize=None)
def code_version(repo: Path = PROJECT) -> Optional[str]:
    """'<commit>', or '<commit>+<digest of `git diff HEAD`>' when tracked files were changed (the same edits give
    the same digest; new files git does not track are not seen); None where `repo` is not the top of a git
    checkout (an installed copy inside another repository is not taken for it) or git is missing."""
    try:
        if Path(_git(repo, "rev-parse", "--show-toplevel").decode().strip()).resolve() != Path(repo).resolve():
            return None
        commit = _git(repo, "rev-parse", "HEAD").decode().strip()[:COMMIT_CHARACTERS]
        changes = _git(repo, "diff", "HEAD", "--no-ext-diff", "--binary")
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
