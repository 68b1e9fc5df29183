import importlib.util
import os
import shutil
import subprocess

import pytest

from mxhook import config


def test_defaults_apply_without_a_file(tmp_path, monkeypatch):
    monkeypatch.delenv("MXHOOK_CONFIG", raising=False)
    cfg = config.load(str(tmp_path / "absent.conf"), required=False)
    assert cfg.source is None and cfg.get("milter", "unknown_domains") == "reject"
    assert cfg.value("milter", "max_message_size") == 50 * 1024 * 1024


def test_explicit_missing_file_is_an_error(tmp_path):
    with pytest.raises(config.ConfigError, match="not found"):
        config.load(str(tmp_path / "absent.conf"))


def test_file_overrides_and_typed_errors_name_the_key(tmp_path):
    p = tmp_path / "m.conf"
    p.write_text("[milter]\n# comment\nunknown_domains = pass\nmax_message_size = lots\n")
    cfg = config.load(str(p))
    assert cfg.value("milter", "unknown_domains") == "pass"
    with pytest.raises(config.ConfigError, match=r"\[milter\] max_message_size = 'lots'"):
        cfg.value("milter", "max_message_size")


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


# ---------------------------------------------------------------------------------------------
# The schema: one table, from which settings, `mxhook check`, the conffile and the docs follow

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _gen_conf():
    spec = importlib.util.spec_from_file_location("gen_conf", os.path.join(ROOT, "packaging", "gen-conf.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_agree_with_the_schema():
    """docs/configuration.md lists every key in schema order, with its type, default and the
    schema's one-line meaning as its first sentence."""
    assert _gen_conf().doc_problems() == []


def test_doc_check_notices_a_disagreement(tmp_path):
    doc = open(os.path.join(ROOT, "docs", "configuration.md"), encoding="utf-8").read()
    wrong = doc.replace("| `workers` | integer, at least 1 | `8` |", "| `workers` | integer | `4` |")
    assert wrong != doc
    (tmp_path / "c.md").write_text(wrong.replace("| `user_agent` |", "| `user_agentz` |"))
    problems = _gen_conf().doc_problems(str(tmp_path / "c.md"))
    assert any("[spooler] workers: docs say type 'integer'" in p for p in problems), problems
    assert any("[spooler] workers: docs say default '4'" in p for p in problems), problems
    assert any("user_agentz" in p for p in problems), problems


def test_conffile_lists_every_key_commented_and_passes_its_checks(tmp_path):
    gen = _gen_conf()
    out = tmp_path / "mxhook.conf"
    assert gen.main([str(out)]) == 0
    text = out.read_text()
    for key in config.SCHEMA:
        assert f"#{key.name} =" in text
    assert config.load(str(out)).raw == config.DEFAULTS


def test_defaults_pass_every_check():
    assert config.from_dict({}).problems() == []


@pytest.mark.parametrize("key", [k for k in config.SCHEMA
                                 if k.type not in (config.TEXT, config.PATH, config.LIST)],
                         ids=lambda k: f"{k.section}.{k.name}")
def test_problems_name_each_bad_key_once(key):
    cfg = config.from_dict({key.section: {key.name: "no such value!"}})
    (problem,) = cfg.problems()
    assert f"[{key.section}] {key.name} = 'no such value!': " in problem
    assert problem.startswith("built-in defaults: ") and "\n" not in problem


def test_a_failed_check_says_what_the_key_must_be():
    cfg = config.from_dict({"spooler": {"workers": "0", "disable_after_days": "-1"},
                            "milter": {"regex_timeout": "0"}})
    assert cfg.problems() == [
        "built-in defaults: [milter] regex_timeout must be above 0, got 0.0",
        "built-in defaults: [spooler] workers must be at least 1, got 0",
        "built-in defaults: [spooler] disable_after_days must be 0 (never) or more, got -1.0",
    ]


def test_daemon_settings_are_typed_and_name_every_bad_key():
    from mxhook.daemons.logfollow import LogfollowSettings
    from mxhook.daemons.milter import MilterSettings
    from mxhook.daemons.spooler import SpoolerSettings

    cfg = config.from_dict({"paths": {"spool_dir": "/tmp/s"}, "http": {"allow_networks": "10.0.0.0/8"},
                            "milter": {"event_headers": "X-App-Id, X-Campaign"}})
    spooler = SpoolerSettings.from_config(cfg)
    assert (spooler.workers, spooler.max_payload_size, spooler.blocklist) == (8, 25 * 1024**2, True)
    assert [str(n) for n in spooler.allow_networks] == ["10.0.0.0/8"]
    milter = MilterSettings.from_config(cfg)
    assert milter.spool_dir == "/tmp/s" and milter.event_headers == ("X-App-Id", "X-Campaign")
    assert milter.outbound_daemon_names == frozenset({"ORIGINATING"}) and milter.heuristic_from_equals_to is True
    follow = LogfollowSettings.from_config(cfg)
    assert (follow.spool_dir, follow.batch_lines, follow.ignore_null_sender) == ("/tmp/s", 1000, True)

    bad = config.from_dict({"logfollow": {"source": "syslog", "batch_lines": "0"},
                            "spooler": {"log_level": "verbose"}})
    with pytest.raises(config.ConfigError) as raised:
        LogfollowSettings.from_config(bad)
    assert str(raised.value).splitlines() == [
        "built-in defaults: [logfollow] source = 'syslog': must be one of auto, file, journald",
        "built-in defaults: [logfollow] batch_lines must be at least 1, got 0",
    ]
    SpoolerSettings.from_config(bad)  # the log keys are logsetup's, which falls back


def test_man_page_lists_every_key_and_renders_without_warnings(tmp_path):
    gen = _gen_conf()
    page = gen.render_man()
    for section, keys in config.SECTIONS.items():
        assert f".SS [{section}]" in page
        for name in keys:
            assert f"\\fB{name}\\fR (" in page, name
    path = tmp_path / "mxhook.conf.5"
    path.write_text(page, encoding="utf-8")
    if shutil.which("man") is None:
        pytest.skip("man is not installed")
    # lintian's check: man's own warnings, UTF-8 input
    proc = subprocess.run(["man", "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", str(path)],
                          capture_output=True, text=True, env={**os.environ, "LC_ALL": "C.UTF-8"})
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
