"""code_watch's globs (control/code_watch.py), pure: what a pattern matches, where it is watched."""

from __future__ import annotations

import pytest

from orchestrator.control.code_watch import glob_regex, root_of

CASES = [
    ("/srv/app/**/*.py", "/srv/app/x.py", True),
    ("/srv/app/**/*.py", "/srv/app/a/b/x.py", True),
    ("/srv/app/**/*.py", "/srv/app/a/b/x.pyc", False),
    ("/srv/app/**/*.py", "/srv/other/x.py", False),
    ("/srv/app/*.py", "/srv/app/a/x.py", False),
    ("/srv/app/*.py", "/srv/app/x.py", True),
    ("/srv/app/mod?.py", "/srv/app/mod1.py", True),
    ("/srv/app/mod?.py", "/srv/app/mod12.py", False),
    ("/srv/app/[ab].py", "/srv/app/b.py", True),
    ("/srv/app/[!ab].py", "/srv/app/b.py", False),
    ("/srv/app/**", "/srv/app/a/b/c.txt", True),
    ("/srv/a.b/x.py", "/srv/aXb/x.py", False),
]


@pytest.mark.parametrize("pattern, path, matches", CASES)
def test_glob_regex(pattern, path, matches):
    assert bool(glob_regex(pattern).match(path)) is matches


@pytest.mark.parametrize("pattern, root", [
    ("/srv/app/**/*.py", "/srv/app"), ("/srv/app/*.py", "/srv/app"), ("/srv/*/x.py", "/srv"),
    ("/srv/app/main.py", "/srv/app"),
])
def test_root_of(pattern, root):
    assert root_of(pattern) == root
