"""Which code trained a run: a commit, and a digest of uncommitted changes, from a git checkout of one's own."""
import os
import subprocess

import pytest

from pipeline.errors import UserError
from pipeline.provenance import (check_same_code, code_version, finished_by_other_code_note, other_code_note,
                                 run_version)


def git(repo, *arguments):
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *arguments],
                          capture_output=True, check=True, text=True).stdout.strip()


def test_a_commit_and_a_digest_of_its_uncommitted_changes(tmp_path):
    repo = tmp_path / "project"
    (repo / "pipeline").mkdir(parents=True)
    git(repo, "init", "-q")
    squeeze, readme = repo / "pipeline" / "squeeze.py", repo / "README.md"
    squeeze.write_text("EPS = 1e-5\n")
    readme.write_text("# project\n")
    git(repo, "add", "pipeline/squeeze.py", "README.md")
    git(repo, "commit", "-qm", "first")
    commit = git(repo, "rev-parse", "HEAD")
    assert code_version(repo) == commit[:12]
    readme.write_text("# project, edited\n")  # no code: the same version
    assert code_version.__wrapped__(repo) == commit[:12]
    squeeze.write_text("EPS = 1e-3\n")  # an edit that changes results, not committed
    edited = code_version.__wrapped__(repo)
    assert edited.startswith(commit[:12] + "+") and len(edited) == 12 + 1 + 8
    squeeze.write_text("EPS = 1e-4\n")
    assert code_version.__wrapped__(repo) not in (edited, commit[:12])  # another edit, another version
    squeeze.write_text("EPS = 1e-3\n")
    assert code_version.__wrapped__(repo) == edited  # the same edit, the same version
    (repo / "pipeline" / "notes.txt").write_text("untracked\n")
    assert code_version.__wrapped__(repo) == edited


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to give a checkout away")
def test_a_checkout_of_another_user_has_its_version(tmp_path):
    """git refuses a repository another user owns ("detected dubious ownership"): a lab's shared clone, or a
    container run with --user over the host's checkout, trained every run with its code unrecorded."""
    repo = tmp_path / "shared"
    (repo / "pipeline").mkdir(parents=True)
    git(repo, "init", "-q")
    (repo / "pipeline" / "squeeze.py").write_text("EPS = 1e-5\n")
    git(repo, "add", "pipeline/squeeze.py")
    git(repo, "commit", "-qm", "first")
    commit = git(repo, "rev-parse", "HEAD")
    for folder, _, names in os.walk(repo):
        for path in [folder, *(os.path.join(folder, name) for name in names)]:
            os.chown(path, 65534, 65534)  # nobody's
    assert code_version.__wrapped__(repo) == commit[:12]


def test_no_version_outside_the_top_of_a_git_checkout(tmp_path):
    """An installed copy inside another repository (site-packages in a venv in a checkout) is not that repository."""
    assert code_version(tmp_path) is None
    git(tmp_path, "init", "-q")
    (tmp_path / "pipeline").mkdir()
    assert code_version(tmp_path / "pipeline") is None


def test_a_resume_by_other_code_is_said_and_an_unknown_version_is_not():
    assert other_code_note("aaaaaaaaaaaa", "bbbbbbbbbbbb+0123abcd").startswith(
        "the epochs so far were trained by code aaaaaaaaaaaa, and this is bbbbbbbbbbbb+0123abcd: the run goes on")
    assert [other_code_note(*pair) for pair in (("a", "a"), (None, "a"), ("a", None))] == [None] * 3


def test_finished_runs_of_other_code_are_named_at_an_ablations_start():
    results = [{"code": ["aaaaaaaaaaaa"]}, {"code": ["bbbbbbbbbbbb"]}, {"code": ["aaaaaaaaaaaa", "bbbbbbbbbbbb"]},
               {"code": [None]}, {}]  # the last two recorded none: not counted
    assert [run_version(result) for result in results] == ["aaaaaaaaaaaa", "bbbbbbbbbbbb",
                                                           "aaaaaaaaaaaa then bbbbbbbbbbbb", None, None]
    assert finished_by_other_code_note(results, "bbbbbbbbbbbb") == (
        "2 of the 5 finished runs were trained by other code (aaaaaaaaaaaa, aaaaaaaaaaaa then bbbbbbbbbbbb; this is "
        "bbbbbbbbbbbb): the report says so under its table, since a change that moves results reads as a difference "
        "between arms")
    assert finished_by_other_code_note(results[1:2], "bbbbbbbbbbbb") is None
    assert finished_by_other_code_note(results, None) is None


def test_processes_that_run_other_code_are_refused():
    """A node with another checkout trained in lockstep with the rest without a word."""
    check_same_code([("node0", "aaaaaaaaaaaa"), ("node0", "aaaaaaaaaaaa"), ("node1", None)])  # None: unknown
    with pytest.raises(UserError) as error:
        check_same_code([("node0", None), ("node0", "aaaaaaaaaaaa"), ("node1", "aaaaaaaaaaaa+0123abcd")])
    assert str(error.value) == ("the processes run other code: rank 1 on node0 runs aaaaaaaaaaaa, rank 2 on node1 "
                                "runs aaaaaaaaaaaa+0123abcd; check out the same commit (and changes) on every node")
