import pytest

from mxhook import config


def test_defaults_apply_without_a_file(tmp_path, monkeypatch):
    monkeypatch.delenv("MXHOOK_CONFIG", raising=False)
    cfg = config.load(str(tmp_path / "absent.conf"), required=False)
    assert cfg.source is None and cfg.get("milter", "unknown_domains") == "reject"
    assert cfg.size("milter", "max_message_size") == 50 * 1024 * 1024


def test_explicit_missing_file_is_an_error(tmp_path):
    with pytest.raises(config.ConfigError, match="not found"):
        config.load(str(tmp_path / "absent.conf"))


def test_file_overrides_and_typed_errors_name_the_key(tmp_path):
    p = tmp_path / "m.conf"
    p.write_text("[milter]\n# comment\nunknown_domains = pass\nmax_message_size = lots\n")
    cfg = config.load(str(p))
    assert cfg.choice("milter", "unknown_domains", ("reject", "pass")) == "pass"
    with pytest.raises(config.ConfigError, match=r"\[milter\] max_message_size = 'lots'"):
        cfg.size("milter", "max_message_size")


@pytest.mark.parametrize("text,message", [
    ("[nosuch]\na = 1\n", "unknown section"),
    ("[milter]\nsocketz = x\n", "unknown key 'socketz'"),
    ("garbage without section\n", r"line 1: a setting before the first \[section\]: 'garbage without section'$"),
    ("[milter]\n# ok\nthis is not valid\n", r"line 3: not `key = value`, a \[section\] or a comment: 'this is not valid'$"),
    ("[milter]\nlog = a\nlog = b\n", r"line 3: \[milter\] log is set twice$"),
    ("[milter]\n[milter]\n", r"line 2: section \[milter\] appears twice$"),
])
def test_unknown_keys_and_syntax_errors(tmp_path, text, message):
    p = tmp_path / "m.conf"
    p.write_text(text)
    with pytest.raises(config.ConfigError, match=message) as raised:
        config.load(str(p))
    assert "\n" not in str(raised.value)  # one line, for stderr and the journal


def test_env_variable_names_the_file(tmp_path, monkeypatch):
    p = tmp_path / "m.conf"
    p.write_text("[paths]\nspool_dir = /tmp/x\n")
    monkeypatch.setenv("MXHOOK_CONFIG", str(p))
    assert config.load().spool_dir == "/tmp/x"
