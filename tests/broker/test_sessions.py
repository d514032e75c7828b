"""Loading sessions from SESSIONS (a comma list) and SESSIONS_FILE (JSON or TOML). No Redis."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from broker import ConfigError, Session, load_sessions, session_id_for


def write_json(tmp_path: Path, content: Any, name: str = "sessions.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(content), encoding="utf-8")
    return path


def test_comma_list_derives_ids_from_secrets() -> None:
    """SESSIONS gives one session per non-empty item, secrets stripped, ids derived stably."""
    sessions = load_sessions(secrets=" key-one, key-two,,key-three ,", path=None)
    assert [s.secret for s in sessions] == ["key-one", "key-two", "key-three"]
    assert [s.id for s in sessions] == [session_id_for(s.secret) for s in sessions]
    assert sessions == load_sessions(secrets="key-one,key-two,key-three", path=None)


def test_derived_id_does_not_reveal_the_secret() -> None:
    """A derived id is a short hash: valid as an id and containing no part of the secret."""
    secret = "sk-live-abcdef"
    session_id = session_id_for(secret)
    assert session_id.startswith("s-")
    assert len(session_id) == 14
    assert "abcdef" not in session_id
    assert session_id != session_id_for("sk-live-abcdeg")


def test_comma_list_with_repeated_secret_is_rejected() -> None:
    """The same secret twice in SESSIONS is a duplicate id; the message names SESSIONS, not it."""
    with pytest.raises(ConfigError, match=r"SESSIONS: session id 's-[0-9a-f]{12}' appears twice"):
        load_sessions(secrets="same-secret,same-secret", path=None)


def test_comma_list_of_nothing_is_rejected() -> None:
    """SESSIONS made only of commas and spaces is an error naming SESSIONS."""
    with pytest.raises(ConfigError, match="SESSIONS: no sessions"):
        load_sessions(secrets=" , ,", path=None)


def test_no_configuration_is_rejected() -> None:
    """With neither SESSIONS nor SESSIONS_FILE the error says how to configure sessions."""
    with pytest.raises(ConfigError, match=r"set SESSIONS .* or SESSIONS_FILE"):
        load_sessions(secrets=None, path=None)
    with pytest.raises(ConfigError, match="no sessions configured"):
        load_sessions(secrets="", path=None)


def test_both_sources_are_rejected(tmp_path: Path) -> None:
    """Giving SESSIONS and SESSIONS_FILE together is an error rather than a silent choice."""
    path = write_json(tmp_path, {"sessions": [{"id": "a", "secret": "x"}]})
    with pytest.raises(ConfigError, match="both set"):
        load_sessions(secrets="y", path=path)


def test_json_file_with_every_field(tmp_path: Path) -> None:
    """A JSON file gives sessions with their ids, weights, limits and enabled flags."""
    path = write_json(
        tmp_path,
        {
            "sessions": [
                {"id": "a", "secret": "sa", "weight": 2, "max_concurrency": 3, "rpm": 60},
                {"id": "b.2", "secret": "sb", "enabled": False},
            ]
        },
    )
    assert load_sessions(secrets=None, path=path) == [
        Session(id="a", secret="sa", weight=2.0, max_concurrency=3, rpm=60.0),
        Session(id="b.2", secret="sb", enabled=False),
    ]


def test_toml_file(tmp_path: Path) -> None:
    """A file whose name ends in .toml is read as TOML with the same fields."""
    path = tmp_path / "sessions.toml"
    path.write_text(
        '[[sessions]]\nid = "a"\nsecret = "sa"\nweight = 0.5\n\n'
        '[[sessions]]\nsecret = "sb"\nmax_concurrency = 1\n',
        encoding="utf-8",
    )
    assert load_sessions(secrets=None, path=path) == [
        Session(id="a", secret="sa", weight=0.5),
        Session(id=session_id_for("sb"), secret="sb", max_concurrency=1),
    ]


def test_predecessor_file_with_session_key_alias(tmp_path: Path) -> None:
    """The predecessor's ``session_key`` is read as the secret, its stale counters ignored."""
    path = write_json(
        tmp_path,
        {
            "sessions": [
                {"session_key": "old-key", "total_requests": 10, "error_count": 2},
                {"id": "named", "session_key": "other-key", "last_used": "2024-01-01"},
            ]
        },
    )
    assert load_sessions(secrets=None, path=path) == [
        Session(id=session_id_for("old-key"), secret="old-key"),
        Session(id="named", secret="other-key"),
    ]


def test_file_with_duplicate_ids(tmp_path: Path) -> None:
    """Two sessions with one id are rejected; the message names the file and the id."""
    path = write_json(
        tmp_path, {"sessions": [{"id": "a", "secret": "x"}, {"id": "a", "secret": "y"}]}
    )
    with pytest.raises(ConfigError, match=r"SESSIONS_FILE .*\.json: session id 'a' appears"):
        load_sessions(secrets=None, path=path)


def test_file_with_no_sessions(tmp_path: Path) -> None:
    """A file with an empty session list is rejected, naming the file."""
    path = write_json(tmp_path, {"sessions": []})
    with pytest.raises(ConfigError, match=r"sessions\.json: no sessions"):
        load_sessions(secrets=None, path=path)


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        pytest.param({"id": "a", "secret": "x", "weight": 0}, "weight", id="weight-zero"),
        pytest.param({"id": "a", "secret": "x", "weight": -1}, "weight", id="weight-negative"),
        pytest.param({"id": "a", "secret": "x", "max_concurrency": 0}, "max_concurrency",
                     id="max-concurrency-zero"),
        pytest.param({"id": "a", "secret": "x", "max_concurrency": "2"}, "max_concurrency",
                     id="max-concurrency-string"),
        pytest.param({"id": "a", "secret": "x", "rpm": 0}, "rpm", id="rpm-zero"),
        pytest.param({"id": "a", "secret": "x", "enabled": "yes"}, "enabled", id="enabled-string"),
        pytest.param({"id": "a b", "secret": "x"}, "id", id="id-with-space"),
        pytest.param({"id": "x" * 65, "secret": "x"}, "id", id="id-too-long"),
        pytest.param({"id": "a", "secret": ""}, "secret", id="secret-empty"),
        pytest.param({"id": "a", "secret": 5}, "secret", id="secret-number"),
        pytest.param({"id": "a", "secret": "x", "colour": "red"}, "colour", id="unknown-field"),
    ],
)  # fmt: skip
def test_bad_field_value_names_file_and_field(
    tmp_path: Path, entry: dict[str, Any], field: str
) -> None:
    """An invalid value is a ConfigError naming the file and the offending field."""
    path = write_json(tmp_path, {"sessions": [entry]})
    with pytest.raises(ConfigError) as caught:
        load_sessions(secrets=None, path=path)
    message = str(caught.value)
    assert message.startswith(f"SESSIONS_FILE {path}: ")
    assert field in message


def test_bad_json_names_the_file(tmp_path: Path) -> None:
    """A file that is not JSON is a ConfigError naming the file and the format."""
    path = tmp_path / "sessions.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"sessions\.json: not valid JSON"):
        load_sessions(secrets=None, path=path)


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    """A .toml file that is not TOML is a ConfigError naming the file and the format."""
    path = tmp_path / "sessions.toml"
    path.write_text("[[sessions]\nid = ", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"sessions\.toml: not valid TOML"):
        load_sessions(secrets=None, path=path)


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    """A file that cannot be read is a ConfigError naming it, with the OS error as cause."""
    path = tmp_path / "absent.json"
    with pytest.raises(ConfigError, match=r"absent\.json: cannot read it") as caught:
        load_sessions(secrets=None, path=path)
    assert isinstance(caught.value.__cause__, FileNotFoundError)


def test_wrong_top_level_shape(tmp_path: Path) -> None:
    """A file that is a bare list instead of ``{"sessions": [...]}`` is rejected."""
    path = write_json(tmp_path, [{"id": "a", "secret": "x"}])
    with pytest.raises(ConfigError, match=r"sessions\.json: Expected `object`"):
        load_sessions(secrets=None, path=path)


def test_secret_never_in_repr_or_str() -> None:
    """Neither repr nor str of a Session (alone or in a list) shows its secret."""
    session = Session(id="a", secret="sk-very-secret", weight=2, max_concurrency=1)
    for text in (repr(session), str(session), f"{session}", repr([session]), str([session])):
        assert "sk-very-secret" not in text
        assert "'a'" in text


def test_secret_never_in_config_errors(tmp_path: Path) -> None:
    """Errors about a file or list do not quote the secrets in it."""
    secret = "sk-very-secret"
    path = write_json(tmp_path, {"sessions": [{"secret": secret}, {"secret": secret, "weight": 0}]})
    for load in (
        lambda: load_sessions(secrets=None, path=path),
        lambda: load_sessions(secrets=f"{secret},{secret}", path=None),
    ):
        with pytest.raises(ConfigError) as caught:
            load()
        assert secret not in str(caught.value)
