from forwardauth.core.levels import Level, Levels

L = Levels((Level("password", 0, ("urn:p",), ("pwd",)), Level("mfa", 1, ("urn:m",), ("otp", "mfa")),
            Level("hardware", 2, ("urn:h",), ("hwk",))))


def test_total_order():
    assert L.at_least("mfa", "password")
    assert L.at_least("mfa", "mfa")
    assert not L.at_least("password", "mfa")
    assert L.at_least("hardware", "password")


def test_unknown_and_missing_levels_never_satisfy():
    assert not L.at_least(None, "password")
    assert not L.at_least("root", "password")
    assert not L.at_least("hardware", "root")


def test_level_from_acr_wins_over_amr():
    assert L.from_claims("urn:p", ["hwk"]).name == "password"
    assert L.from_claims("urn:m", None).name == "mfa"


def test_level_from_amr_when_acr_unusable():
    assert L.from_claims(None, ["pwd", "otp"]).name == "mfa"
    assert L.from_claims("urn:unknown", ["pwd"]).name == "password"
    assert L.from_claims("urn:unknown", ["sms"]) is None
    assert L.from_claims(None, None) is None


def test_and_above():
    assert [lv.name for lv in L.and_above("mfa")] == ["mfa", "hardware"]


def test_non_string_names_are_not_levels():
    from forwardauth.core.levels import Level, Levels

    lv = Levels((Level("password", 0), Level("mfa", 1)))
    assert ["mfa"] not in lv and {"a": 1} not in lv and lv.get(["mfa"]) is None  # type: ignore[arg-type]
    assert lv.at_least("mfa", "password") and not lv.at_least(["mfa"], "password")  # type: ignore[arg-type]
