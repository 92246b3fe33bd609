"""Routing readings to device profiles: rules, first match wins, default, and the config form."""

from __future__ import annotations

import fnmatch
import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from detector.config import ModelConfig, RouteConfig
from detector.core.readings import ReadingParser, RejectReason
from detector.core.routing import DEFAULT_PROFILE, Router, RouteRule

PROFILES = ["pump", "fan", "compressor"]
PUMP, FAN, COMPRESSOR = range(3)


def _router(*rules: RouteRule, default: str | None = None) -> Router:
    return Router(PROFILES, list(rules), default)


# one rule of each kind


def test_device_glob_matches_the_whole_id() -> None:
    router = _router(RouteRule("devices", ("pump-*", "p?"), "pump"))
    assert router.route("readings", "pump-7") == PUMP
    assert router.route("readings", "pump-") == PUMP
    assert router.route("readings", "p1") == PUMP
    assert router.route("readings", "p12") is None
    assert router.route("readings", "my-pump-7") is None
    assert router.route("readings", "Pump-7") is None  # case-sensitive on every platform


def test_device_glob_treats_regex_characters_literally() -> None:
    router = _router(RouteRule("devices", ("fan.1", "c[0-9]"), "fan"))
    assert router.route("t", "fan.1") == FAN
    assert router.route("t", "fanX1") is None
    assert router.route("t", "c7") == FAN
    assert router.route("t", "cx") is None


def test_device_regex_must_match_the_whole_id_not_a_prefix() -> None:
    router = _router(RouteRule("device_regex", (r"fan-\d+",), "fan"))
    assert router.route("t", "fan-12") == FAN
    assert router.route("t", "fan-12b") is None  # re.match would accept this prefix
    assert router.route("t", "xfan-12") is None  # re.search would accept this
    assert router.route("t", "fan-") is None


def test_device_regex_alternation_is_anchored_as_a_whole() -> None:
    router = _router(RouteRule("device_regex", ("fan|blower-[0-9]",), "fan"))
    assert router.route("t", "fan") == FAN
    assert router.route("t", "blower-3") == FAN
    assert router.route("t", "fan-1") is None
    assert router.route("t", "xblower-3") is None


def test_topic_rule_matches_exact_topic_names() -> None:
    router = _router(RouteRule("topics", ("fans", "fan-readings"), "fan"))
    assert router.route("fans", "anything") == FAN
    assert router.route("fan-readings", "anything") == FAN
    assert router.route("fans-2", "anything") is None
    assert router.route("fan*", "anything") is None  # topics are names, not globs


def test_reading_rule_takes_the_profile_the_reading_declares() -> None:
    router = _router(RouteRule("reading"))
    assert router.reads_field
    assert router.route("t", "d", "fan") == FAN
    assert router.route("t", "d", "compressor") == COMPRESSOR


def test_reading_without_a_profile_field_falls_through_to_later_rules() -> None:
    router = _router(RouteRule("reading"), RouteRule("devices", ("pump-*",), "pump"))
    assert router.route("t", "pump-1", None) == PUMP
    assert router.route("t", "other", None) is None


def test_reading_declaring_an_unconfigured_profile_is_unknown() -> None:
    """It said what it is: no later rule or default picks another model for it."""
    router = _router(RouteRule("reading"), RouteRule("devices", ("pump-*",), "pump"), default="fan")
    assert router.route("t", "pump-1", "boiler") is None
    assert router.route("t", "x", "boiler") is None
    assert router.route("t", "x", None) == FAN


def test_parser_rejects_an_unconfigured_declared_profile_as_unknown_profile() -> None:
    router = _router(RouteRule("reading"), default="pump")
    parser = ReadingParser(["a"], router=router, profile_features=[["a"], ["a"], ["a"]])
    reading = {"device_id": "d", "ts": 1.0, "sensors": {"a": 1.0}, "profile": "boiler"}
    parsed = parser.parse(json.dumps(reading).encode(), "t")
    assert parsed.device_ids == []
    (rejection,) = parsed.rejections
    assert rejection.reason is RejectReason.UNKNOWN_PROFILE
    accepted = parser.parse(json.dumps({**reading, "profile": "fan"}).encode(), "t")
    assert accepted.profiles == [FAN]


def test_declared_profile_is_ignored_without_a_reading_rule() -> None:
    router = _router(RouteRule("devices", ("pump-*",), "pump"))
    assert not router.reads_field
    assert router.route("t", "pump-1", "fan") == PUMP
    assert router.route("t", "pump-1", "boiler") == PUMP
    assert router.route("t", "other", "fan") is None


# order, default, unknown


def test_first_matching_rule_wins() -> None:
    pump_first = _router(
        RouteRule("devices", ("pump-*",), "pump"), RouteRule("topics", ("fans",), "fan")
    )
    fan_first = _router(
        RouteRule("topics", ("fans",), "fan"), RouteRule("devices", ("pump-*",), "pump")
    )
    assert pump_first.route("fans", "pump-1") == PUMP
    assert fan_first.route("fans", "pump-1") == FAN


def test_first_matching_rule_wins_over_a_reading_field_after_it() -> None:
    router = _router(RouteRule("device_regex", ("c-.*",), "compressor"), RouteRule("reading"))
    assert router.route("t", "c-1", "fan") == COMPRESSOR
    assert router.route("t", "p-1", "fan") == FAN


def test_default_profile_only_when_no_rule_matches() -> None:
    router = _router(RouteRule("devices", ("pump-*",), "pump"), default="compressor")
    assert router.route("t", "pump-1") == PUMP
    assert router.route("t", "fan-1") == COMPRESSOR


def test_no_match_and_no_default_is_unknown() -> None:
    router = _router(RouteRule("devices", ("pump-*",), "pump"))
    assert router.route("t", "fan-1") is None
    assert _router().route("t", "fan-1") is None


def test_default_alone_routes_everything() -> None:
    assert _router(default="fan").route("t", "anything", "pump") == FAN


def test_repeated_questions_get_the_same_answer() -> None:
    """The router remembers answers: asking again (cached) must not change them."""
    router = _router(RouteRule("reading"), RouteRule("devices", ("pump-*",), "pump"))
    questions = [("t", "pump-1", None), ("t", "pump-1", "fan"), ("t", "pump-1", "boiler")]
    first = [router.route(*question) for question in questions]
    assert first == [PUMP, FAN, None]
    assert [router.route(*question) for question in questions] == first


# invalid rules and routers


@pytest.mark.parametrize(
    ("kind", "patterns", "profile"),
    [
        ("reading", ("x",), None),
        ("reading", (), "pump"),
        ("devices", (), "pump"),
        ("devices", ("pump-*",), None),
        ("topics", (), "fan"),
        ("device_regex", ("a", "b"), "fan"),
        ("device_regex", ("fan-(",), "fan"),
    ],
)
def test_malformed_rules_are_refused(
    kind: Any, patterns: tuple[str, ...], profile: str | None
) -> None:
    with pytest.raises(ValueError):
        RouteRule(kind, patterns, profile)


def test_router_refuses_a_rule_or_default_naming_an_unknown_profile() -> None:
    with pytest.raises(ValueError, match="boiler"):
        _router(RouteRule("devices", ("b-*",), "boiler"))
    with pytest.raises(ValueError, match="boiler"):
        _router(default="boiler")


# the configuration form

_PROFILES_CONFIG = {"pump": {"path": "models/pump"}, "fan": {"path": "models/fan"}}


def _model_config(**fields: object) -> ModelConfig:
    return ModelConfig.model_validate({"profiles": _PROFILES_CONFIG, **fields})


def test_config_routes_build_the_router_in_order() -> None:
    config = _model_config(
        routes=[
            {"reading": True},
            {"devices": ["pump-*"], "profile": "pump"},
            {"device_regex": r"fan-\d+", "profile": "fan"},
            {"topics": ["fans"], "profile": "fan"},
        ],
        default_profile="pump",
    )
    router = config.router()
    assert router is not None
    assert router.profiles == list(config.profile_map()) == ["pump", "fan"]
    assert router.route("t", "x", "fan") == 1
    assert router.route("t", "pump-3") == 0
    assert router.route("t", "fan-3") == 1
    assert router.route("t", "fan-3x") == 0  # the default: the regex wants the whole id
    assert router.route("fans", "x") == 1
    assert router.route("t", "x") == 0


def test_route_config_builds_each_rule_kind() -> None:
    assert RouteConfig(reading=True).rule() == RouteRule("reading")
    assert RouteConfig(devices=["a*", "b"], profile="p").rule() == RouteRule(
        "devices", ("a*", "b"), "p"
    )
    assert RouteConfig(device_regex="a.*", profile="p").rule() == RouteRule(
        "device_regex", ("a.*",), "p"
    )
    assert RouteConfig(topics=["t1"], profile="p").rule() == RouteRule("topics", ("t1",), "p")


@pytest.mark.parametrize(
    "route",
    [
        {"devices": ["pump-*"], "device_regex": "pump-.*", "profile": "pump"},
        {"reading": True, "topics": ["fans"], "profile": "fan"},
        {"profile": "pump"},
        {"reading": False, "profile": "pump"},
        {"reading": True, "profile": "pump"},
        {"devices": [], "profile": "pump"},
        {"devices": ["pump-*"]},
        {"device_regex": "pump-(", "profile": "pump"},
        {"topics": ["not a topic"], "profile": "pump"},
        {"devices": ["pump-*"], "profile": "bad name"},
    ],
)
def test_config_refuses_a_malformed_route(route: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        RouteConfig.model_validate(route)
    with pytest.raises(ValidationError):
        _model_config(routes=[route])


def test_config_refuses_a_route_to_an_unconfigured_profile() -> None:
    with pytest.raises(ValidationError, match="boiler"):
        _model_config(routes=[{"devices": ["b-*"], "profile": "boiler"}])


def test_config_refuses_an_unconfigured_default_profile() -> None:
    with pytest.raises(ValidationError, match="boiler"):
        _model_config(default_profile="boiler")


def test_config_with_profiles_needs_routes_or_a_default() -> None:
    with pytest.raises(ValidationError, match=r"routes or model\.default_profile"):
        _model_config()
    assert _model_config(default_profile="fan").router() is not None


def test_single_model_config_has_no_router_and_one_default_profile() -> None:
    config = ModelConfig.model_validate({"path": "models/one"})
    assert config.router() is None
    assert list(config.profile_map()) == [DEFAULT_PROFILE]
    with pytest.raises(ValidationError, match=r"need model\.profiles"):
        ModelConfig.model_validate(
            {"path": "models/one", "routes": [{"devices": ["*"], "profile": DEFAULT_PROFILE}]}
        )


# property: the router is the plain first-match loop

_ALPHABET = "ab-1[]\n"
_device_ids = st.text(_ALPHABET, max_size=5)
_topics = st.sampled_from(["t1", "t2", "t3"])
_profile_names = st.sampled_from(PROFILES)
_globs = st.text(_ALPHABET + "*?", min_size=1, max_size=4) | st.sampled_from(["[ab]*", "[!a]?"])
_regexes = st.sampled_from(["a.*", "a", "b+-?1", "(a|b)-1", ".", "a|b", r"\w*1", "-", "x*"])
_rules = st.one_of(
    st.just(RouteRule("reading")),
    st.builds(
        RouteRule,
        st.just("devices"),
        st.lists(_globs, min_size=1, max_size=3).map(tuple),
        _profile_names,
    ),
    st.builds(RouteRule, st.just("device_regex"), _regexes.map(lambda r: (r,)), _profile_names),
    st.builds(
        RouteRule,
        st.just("topics"),
        st.lists(_topics, min_size=1, max_size=2).map(tuple),
        _profile_names,
    ),
)


def _reference_route(
    rules: list[RouteRule], default: str | None, topic: str, device_id: str, declared: str | None
) -> str | None:
    """The documented semantics, spelled out: the first rule that matches decides."""
    for rule in rules:
        if rule.kind == "reading":
            if declared is not None:
                return declared if declared in PROFILES else None
        elif rule.kind == "topics":
            if topic in rule.patterns:
                return rule.profile
        elif rule.kind == "devices":
            if any(fnmatch.fnmatchcase(device_id, pattern) for pattern in rule.patterns):
                return rule.profile
        elif re.fullmatch(rule.patterns[0], device_id):
            return rule.profile
    return default


@settings(max_examples=400, deadline=None)
@given(
    rules=st.lists(_rules, max_size=5),
    default=st.none() | _profile_names,
    questions=st.lists(
        st.tuples(_topics, _device_ids, st.none() | _profile_names | st.just("boiler")),
        min_size=1,
        max_size=10,
    ),
)
def test_router_equals_the_first_match_loop(
    rules: list[RouteRule],
    default: str | None,
    questions: list[tuple[str, str, str | None]],
) -> None:
    router = Router(PROFILES, rules, default)
    for topic, device_id, declared in questions + questions:  # the second pass is cached
        expected = _reference_route(rules, default, topic, device_id, declared)
        found = router.route(topic, device_id, declared)
        assert (None if found is None else PROFILES[found]) == expected
