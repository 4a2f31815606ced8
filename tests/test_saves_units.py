"""The pure pieces of save detection: lookup chains through symlinks, event verdicts, digests."""

from __future__ import annotations

import pytest

from orchestrator.config.load import load_config
from orchestrator.control.saves import FINISHED, GONE, IGNORE, WRITING, classify, lookup_chain, sources_digest
from orchestrator.errors import ConfigError


def test_lookup_chain_of_a_plain_file(tmp_path):
    (tmp_path / "w.toml").write_text("")
    assert lookup_chain(str(tmp_path / "w.toml")) == [str(tmp_path / "w.toml")]


def test_lookup_chain_through_a_configmap_layout(tmp_path):
    (tmp_path / "..2026_01_01").mkdir()
    (tmp_path / "..2026_01_01" / "w.toml").write_text("")
    (tmp_path / "..data").symlink_to("..2026_01_01")
    (tmp_path / "w.toml").symlink_to("..data/w.toml")
    assert lookup_chain(str(tmp_path / "w.toml")) == [
        str(tmp_path / "w.toml"), str(tmp_path / "..data"), str(tmp_path / "..2026_01_01" / "w.toml")]


def test_lookup_chain_through_an_absolute_link_a_missing_file_and_a_loop(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "abs").symlink_to(tmp_path / "real" / "gone.toml")
    assert lookup_chain(str(tmp_path / "abs")) == [str(tmp_path / "abs"), str(tmp_path / "real" / "gone.toml")]
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    chain = lookup_chain(str(tmp_path / "a"))  # ends, like the kernel's ELOOP
    assert 2 <= len(chain) <= 42


@pytest.mark.parametrize("kind,src,dest,link,verdict", [
    ("closed", "/c/w.toml", None, False, FINISHED),         # vim in place, cp, git, shell >
    ("moved", "/c/.tmp", "/c/w.toml", False, FINISHED),     # sed -i, mv, atomic writers
    ("moved", "/c/..data_tmp", "/c/..data", False, FINISHED),  # ConfigMap swap
    ("created", "/c/w.toml", None, True, FINISHED),         # ln -s new w.toml
    ("moved", "/c/w.toml", "/c/w.toml~", False, GONE),      # vim's default save, first step
    ("deleted", "/c/w.toml", None, False, GONE),            # git checkout, first step
    ("created", "/c/w.toml", None, False, WRITING),
    ("modified", "/c/w.toml", None, False, WRITING),        # a writer pausing mid-file
    ("attrib", "/c/w.toml", None, False, IGNORE),
    ("modified", "/c/.w.toml.swp", None, False, IGNORE),    # vim's swap file
    ("closed", "/c/other.toml", None, False, IGNORE),
])
def test_classify(kind, src, dest, link, verdict):
    assert classify(kind, src, dest, {"/c/w.toml", "/c/..data"}, link) == verdict


def test_sources_digest_follows_content_names_and_new_glob_matches(tmp_path):
    main = tmp_path / "w.toml"
    main.write_text("a = 1\n")
    (tmp_path / "conf.d").mkdir()
    pattern = str(tmp_path / "conf.d" / "*.toml")
    first = sources_digest([main], [pattern])
    assert first == sources_digest([main], [pattern])
    main.write_text("a = 1\n")  # saved again, unchanged
    assert sources_digest([main], [pattern]) == first
    (tmp_path / "conf.d" / "x.toml").write_text("")  # a new, even empty, included file
    second = sources_digest([main], [pattern])
    assert second != first
    main.write_text("a = 2\n")
    assert sources_digest([main], [pattern]) not in (first, second)
    main.unlink()
    assert sources_digest([main], [pattern]) is None


@pytest.mark.parametrize("value,message", [('"0s"', "must be longer than zero"), ("true", "")])
def test_settle_is_a_positive_duration(tmp_path, value, message):
    path = tmp_path / "workers.toml"
    path.write_text(f'[orchestrator]\nsettle = {value}\n[workers.a]\ncommand = "x"\n')
    with pytest.raises(ConfigError, match="orchestrator.settle") as caught:
        load_config(path)
    assert message in str(caught.value) and f"{path}:2:" in str(caught.value)


def test_settle_default_and_value(tmp_path):
    path = tmp_path / "workers.toml"
    path.write_text('[workers.a]\ncommand = "x"\n')
    assert load_config(path).settings.settle == 2.0
    path.write_text('[orchestrator]\nsettle = "500ms"\n[workers.a]\ncommand = "x"\n')
    assert load_config(path).settings.settle == 0.5
