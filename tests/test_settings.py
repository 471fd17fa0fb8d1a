"""One settings source (issue 15, item 4): each of a hub's settings is declared once in hub/settings.py with
its flag, variable, default and help; `tunehub serve`'s parser is generated from the declarations; a flag
beats its variable, which beats the default; a variable that does not parse, or a value out of range, is
refused naming it; and every declared flag and variable is in the docs.

Run: python -m pytest tests/test_settings.py -q
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hub.cli.main import build_parser
from hub.settings import Settings, SettingsError

REPO = Path(__file__).resolve().parents[1]


def serve(*flags: str):
    return build_parser().parse_args(["serve", *flags])


def test_the_serve_parser_is_generated_from_the_declarations():
    actions = {a.dest: a for a in build_parser()._subparsers._group_actions[0].choices["serve"]._actions}
    for name, option in Settings.options().items():
        if option.flag:
            assert name in actions and option.flag in actions[name].option_strings, name
            assert option.help.split(" (")[0].replace("%%", "%") in actions[name].help.replace("%%", "%")
            if option.env:
                assert option.env in actions[name].help


def test_a_flag_beats_its_variable_which_beats_the_default(tmp_path):
    env = {"TUNEHUB_ARENA_BOOST": "5", "TUNEHUB_PROMOTION_MIN_VOTES": "12", "TUNEHUB_AUTO_PROMOTE": "yes"}
    from_env = Settings.from_sources(serve(), env)
    assert from_env.arena_candidate_boost == 5.0 and from_env.auto_promote is True
    assert from_env.promotion_rule_values() == {"min_votes": 12, "auto": True}
    flagged = Settings.from_sources(serve("--arena-boost", "2", "--data-dir", str(tmp_path)), env)
    assert flagged.arena_candidate_boost == 2.0 and flagged.data_dir == tmp_path
    plain = Settings.from_sources(serve(), {})
    assert plain.arena_candidate_boost == 3.0 and plain.auto_promote is False and plain.port == 7860
    models = Settings.from_sources(serve("--model", "a", "--model", "b", "--model", "c"), {})
    assert models.model == "a" and models.more_models == ["b", "c"]


@pytest.mark.parametrize(
    ("env", "said"),
    [
        ({"TUNEHUB_ARENA_BOOST": "lots"}, "TUNEHUB_ARENA_BOOST='lots' is not a number"),
        ({"TUNEHUB_PROMOTION_MIN_VOTES": "1.5"}, "TUNEHUB_PROMOTION_MIN_VOTES='1.5' is not a whole number"),
        ({"TUNEHUB_AUTO_PROMOTE": "maybe"}, "TUNEHUB_AUTO_PROMOTE='maybe' is not a yes/no value"),
        ({"TUNEHUB_PROMOTION_RULE": "vibes"}, "TUNEHUB_PROMOTION_RULE='vibes' is not one of"),
    ],
)
def test_a_variable_that_does_not_parse_is_refused_naming_it(env, said):
    with pytest.raises(SettingsError) as refused:
        Settings.from_sources(serve(), env)
    assert said in str(refused.value)


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--arena-boost", "0"], "--arena-boost 0.0 must be above 0"),
        (["--max-queued-generations", "-1"], "--max-queued-generations -1 must be 0 or more"),
        (["--promotion-win-rate", "2"], "the promotion rule: win_rate"),
        (["--port", "70000"], "--port 70000 is not a TCP port"),
    ],
)
def test_a_value_out_of_range_is_refused_at_start(flags, said):
    with pytest.raises(SettingsError) as refused:
        Settings.from_sources(serve(*flags), {}).check()
    assert said in str(refused.value)


def test_every_setting_is_in_the_docs():
    docs = (REPO / "README.md").read_text() + "".join(p.read_text() for p in (REPO / "docs").glob("*.md"))
    missing = [
        given
        for option in Settings.options().values()
        for given in (option.flag, option.env)
        if given and f"`{given}`" not in docs
    ]
    assert not missing, f"settings not documented in README.md or docs/: {missing}"


def test_nothing_below_the_hub_reads_the_environment_for_a_setting():
    """feedback/ receives values: it reads no TUNEHUB_* variable (nor does the hub outside settings.py,
    except the CLI's client commands, which have no hub settings)."""
    readers = [
        str(path.relative_to(REPO))
        for package in ("feedback", "serving", "training", "hub")
        for path in (REPO / package).rglob("*.py")
        if "os.environ" in (text := path.read_text()) and "TUNEHUB_" in text
    ]
    assert sorted(readers) == ["hub/cli/adapters.py", "hub/settings.py"], readers


def test_torch_threads_sleep_between_ops_but_spin_briefly_unless_the_user_says_otherwise(monkeypatch):
    """Issue 12: OMP_WAIT_POLICY=PASSIVE alone woke the engine's OpenMP team for every op of a decode step
    (16-17 against 25-32 tok/s, SmolLM2 with --threads 2); the hub sets a short spin unless one is given."""
    from hub.settings import quiet_environment

    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    quiet_environment()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE" and os.environ["GOMP_SPINCOUNT"] == "10000"
    monkeypatch.setenv("GOMP_SPINCOUNT", "0")
    quiet_environment()
    assert os.environ["GOMP_SPINCOUNT"] == "0"
