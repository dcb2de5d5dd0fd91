"""National identifiers: a value failing its checksum must never be trusted."""

from directory_sync.identifiers import idnat_ps, is_valid_finess, luhn_key, normalize_adeli, normalize_rpps

VALID_RPPS = "10001234565"


def test_valid_rpps_and_its_idnat_form_normalise_to_the_rpps() -> None:
    assert normalize_rpps(VALID_RPPS) == VALID_RPPS
    assert normalize_rpps("8" + VALID_RPPS) == VALID_RPPS
    assert normalize_rpps(" 100 012 345 65 ") == VALID_RPPS


def test_every_single_digit_typo_in_an_rpps_is_rejected() -> None:
    for position in range(11):
        for digit in "0123456789":
            typo = VALID_RPPS[:position] + digit + VALID_RPPS[position + 1 :]
            if typo != VALID_RPPS:
                assert normalize_rpps(typo) is None, typo


def test_wrong_lengths_and_empty_values_are_not_rpps() -> None:
    for value in (None, "", "1000123456", "100012345650", "9" + VALID_RPPS, "abcdefghijk"):
        assert normalize_rpps(value) is None


def test_luhn_key_makes_valid_numbers() -> None:
    body = "81000000"
    adeli = body + luhn_key(body)
    assert normalize_adeli(adeli) == adeli
    assert normalize_adeli("0" + adeli) == adeli
    assert normalize_adeli(adeli[:-1] + str((int(adeli[-1]) + 1) % 10)) is None


def test_idnat_ps_prefers_rpps() -> None:
    assert idnat_ps(VALID_RPPS, "123") == "8" + VALID_RPPS
    assert idnat_ps(None, "810000005") == "0810000005"
    assert idnat_ps() is None


def test_finess_format() -> None:
    assert is_valid_finess("840000087")
    assert is_valid_finess("2A0000012")
    assert not is_valid_finess("84000008")
    assert not is_valid_finess("84000008X")
