"""text.normalize string tables and WER/CER against hand-computed values."""

from __future__ import annotations

import pytest

from whisper_sv.core.text import (
    NORMALISERS,
    ErrorRates,
    cer,
    error_rates,
    kblab_swedish,
    normalize,
    scores,
    wer,
    whisper_basic,
    word_errors,
)

NORMALIZE_TABLE = [
    # case and punctuation
    ("Hej, hur mår du?", "hej hur mår du"),
    ("VAD SA DU!", "vad sa du"),
    ("«Citat» och “citat” – med tankstreck…", "citat och citat med tankstreck"),
    ("(parentes) [hakparentes] {klammer}", "parentes hakparentes klammer"),
    ("e-post", "e post"),
    ("Anna's", "anna s"),
    # Swedish letters and other diacritics are kept
    ("Å Ä Ö", "å ä ö"),
    ("får far", "får far"),
    ("Ångström och idé", "ångström och idé"),
    ("Müller à la carte", "müller à la carte"),
    ("Straße", "straße"),
    # Unicode NFC: combining ring/diaeresis become the precomposed letter
    ("a\u030angstro\u0308m", "ångström"),
    # numbers stay as written, separators inside a number survive
    ("Det kostar 3,5 kronor.", "det kostar 3,5 kronor"),
    ("3.5 och 3,5", "3.5 och 3,5"),
    ("Klockan 10:30!", "klockan 10:30"),
    ("1.000 personer", "1.000 personer"),
    ("1, 2, 3.", "1 2 3"),
    ("tre eller 3", "tre eller 3"),
    ("50 % av 100 kr", "50 av 100 kr"),
    ("10 000", "10 000"),
    # whitespace
    ("  mellan \t  rum\n", "mellan rum"),
    ("", ""),
    ("?!.,", ""),
    ("x\x00y", "x y"),
]


@pytest.mark.parametrize(("text", "expected"), NORMALIZE_TABLE)
def test_normalize(text, expected):
    assert normalize(text) == expected


def test_normalize_is_idempotent():
    for text, _ in NORMALIZE_TABLE:
        once = normalize(text)
        assert normalize(once) == once


def test_wer_hand_computed():
    # ref 3 words; "a x c" = 1 substitution; ref "d" vs "d e" = 1 insertion -> 2/4 words
    assert wer(["a b c", "d"], ["a x c", "d e"]) == pytest.approx(50.0)


def test_wer_deletion():
    assert wer(["en två tre fyra"], ["en tre fyra"]) == pytest.approx(25.0)


def test_wer_can_exceed_100():
    assert wer(["hej"], ["nej nej nej"]) == pytest.approx(300.0)


def test_wer_normalized_vs_orthographic():
    refs, hyps = ["Hej, hur mår du?"], ["hej hur mår du"]
    assert wer(refs, hyps) == 0.0
    # "Hej," != "hej" and "du?" != "du": 2 of 4 words
    assert wer(refs, hyps, normalized=False) == pytest.approx(50.0)


def test_cer_hand_computed():
    # "kavaj" -> "kavaja": one insertion over 5 characters
    assert cer(["kavaj"], ["kavaja"]) == pytest.approx(20.0)
    # spaces count: "en bil" (6 chars) -> "enbil": one deletion
    assert cer(["en bil"], ["enbil"]) == pytest.approx(100 / 6)


def test_cer_diacritics_are_errors():
    # å vs a is a real Swedish error (får/far), not a normalisation
    assert cer(["får"], ["far"]) == pytest.approx(100 / 3)
    assert wer(["får"], ["far"]) == pytest.approx(100.0)


def test_error_rates_all_four():
    rates = error_rates(["Hej, hur mår du?"], ["hej hur mår du"])
    assert isinstance(rates, ErrorRates)
    assert rates.n == 1
    assert rates.wer == 0.0
    assert rates.cer == 0.0
    assert rates.wer_orthographic == pytest.approx(50.0)
    # 16 characters as written; H->h substitution, "," and "?" deleted: 3 edits
    assert rates.cer_orthographic == pytest.approx(300 / 16)


def test_corpus_level_not_mean_of_utterances():
    # utterance rates 100% (1 word) and 0% (3 words): corpus 1/4, not the mean 50%
    assert wer(["a", "b c d"], ["x", "b c d"]) == pytest.approx(25.0)


def test_empty_reference():
    assert wer([""], [""]) == 0.0
    assert wer(["?"], ["hallå"]) == 100.0
    assert wer(["", "a b"], ["x y", "a b"]) == pytest.approx(100.0)  # 2 insertions / 2 words
    assert error_rates([], []).n == 0


def test_length_mismatch_names_the_fix():
    with pytest.raises(ValueError, match="one hypothesis per reference"):
        wer(["a", "b"], ["a"])


def test_single_string_rejected():
    with pytest.raises(ValueError, match="lists of strings"):
        wer("a b", "a b")


def test_word_errors():
    errors = word_errors("Den röda bilen kör", "den röd bilen kör fort")
    assert (errors.substitutions, errors.deletions, errors.insertions) == (1, 0, 1)
    assert errors.reference_words == 4
    assert errors.errors == 2


# ------------------------------------------------------------------ named normalisers


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Det är 3 katter.", "det är tre katter"),
        ("Klockan 21, inte 3,5!", "klockan tjugoett inte tre komma fem"),
        ("Åsa, ÖL och Ärtor", "åsa öl och ärtor"),
        ("0,05 procent", "noll komma noll fem procent"),
    ],
)
def test_kblab_swedish(text, expected):
    assert kblab_swedish(text) == expected


def test_whisper_basic_keeps_diacritics_and_drops_brackets():
    assert whisper_basic("Hej, [musik] hur MÅR du? (skratt)") == "hej hur mår du"


def test_scores_under_each_normaliser():
    got = scores(["Det är 3 katter."], ["det är tre katter"])
    assert list(got) == list(NORMALISERS) == ["orthographic", "whisper_basic", "kblab_swedish"]
    assert got["orthographic"].wer == pytest.approx(75.0)  # Det/det, 3/tre, katter./katter
    assert got["whisper_basic"].wer == pytest.approx(25.0)  # 3/tre
    assert got["kblab_swedish"].wer == 0.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tvättar håret", "Tvättar håret."),
        ("  mössa ", "Mössa."),
        ("Tvättar håret", "Tvättar håret"),  # written with a capital: as it is
        ("tvättar håret.", "tvättar håret."),  # punctuated: as it is
        ("är du där?", "är du där?"),
        ("t-shirt", "t-shirt"),  # a hyphen is punctuation: the writer chose this form
        ("ålder 3", "Ålder 3."),
        ("", ""),
    ],
)
def test_sentence_case(text, expected):
    from whisper_sv.core.text import sentence_case

    assert sentence_case(text) == expected
