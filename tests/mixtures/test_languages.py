"""Language names of a phase: the ISO 639-3 part of a label (matching them is tested with the compiler)."""

from mixtures.languages import language_code


def test_language_code():
    assert language_code("srp_Latn") == "srp"
