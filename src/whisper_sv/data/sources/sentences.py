"""Natural Swedish sentences from the journal-digital newsreel corpus, for synthetic speech.

The ``journal-digital`` package (PyPI, CC-BY-NC-4.0) ships 2,500 SRT transcripts of the
spoken commentary of Swedish newsreels (1910s-1960s) under ``journal_digital/corpus/speech/``.
Only those files are read: importing the package itself needs pandas/python-dotenv pins that
the toolkit does not want, so the folder is located with ``importlib.util.find_spec`` (which
does not run the package's ``__init__``).

The transcripts were made by speech recognition and hold noise: music tags, repeated words,
French or Dutch commentary, all-caps titles. :func:`load_sentences` keeps only complete,
plain-Swedish sentences of ``min_words``..``max_words`` words, each once, in a fixed order.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

CORPUS_LICENSE = "CC-BY-NC-4.0"  # journal-digital's licence: non-commercial use only

__all__ = [
    "CORPUS_LICENSE",
    "CorpusStats",
    "Sentence",
    "clean_sentence",
    "corpus_dir",
    "corpus_files",
    "file_sentences",
    "load_sentences",
    "parse_srt",
    "sentence_key",
    "split_sentences",
]


@dataclass(frozen=True)
class Sentence:
    text: str  # the sentence as written in the corpus (after cleaning)
    origin: str  # corpus file it came from, relative to the speech folder (for attribution)


@dataclass(frozen=True)
class CorpusStats:
    files: int  # SRT files read
    cues: int  # subtitle cues with text
    candidates: int  # sentences found after joining cues
    kept: int  # usable, distinct sentences
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> count


def corpus_dir() -> Path:
    """The ``journal_digital/corpus/speech`` folder of the installed package."""
    spec = importlib.util.find_spec("journal_digital")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "the synthetic source needs the journal-digital corpus: "
            "pip install --no-deps journal-digital"
        )
    root = Path(next(iter(spec.submodule_search_locations))) / "corpus" / "speech"
    if not root.is_dir():
        raise ValueError(f"journal-digital is installed but {root} is missing; reinstall it")
    return root


# ------------------------------------------------------------------------------- parsing

_TIME = re.compile(r"(\d+):(\d\d):(\d\d)[,.](\d{1,3})\s*-->\s*(\d+):(\d\d):(\d\d)[,.](\d{1,3})")
_MARKUP = re.compile(r"<[^>]*>|\{[^}]*\}|\[[^\]]*\]|♪")


def parse_srt(text: str) -> list[tuple[float, float, str]]:
    """Cues of an SRT file as ``(start_s, end_s, text)``; markup and cue numbers dropped."""
    cues: list[tuple[float, float, str]] = []
    for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n").replace("\r", "\n")):
        lines = [line.strip() for line in block.strip().split("\n")]
        for i, line in enumerate(lines):
            m = _TIME.search(line)
            if not m:
                continue
            g = [int(x) for x in m.groups()]
            start = g[0] * 3600 + g[1] * 60 + g[2] + g[3] / 10 ** len(m.group(4))
            end = g[4] * 3600 + g[5] * 60 + g[6] + g[7] / 10 ** len(m.group(8))
            words = " ".join(_MARKUP.sub(" ", t) for t in lines[i + 1 :] if t)
            # Dialogue dashes at the start of a cue ("- Hej!") are not spoken.
            words = re.sub(r"^\s*[-–—]\s*", "", words)
            words = " ".join(words.split())
            if words:
                cues.append((start, end, words))
            break
    return cues


_TERMINAL = (".", "!", "?")
# A sentence ends at . ! ? (and a closing quote, kept) followed by a capital, optionally
# after an opening quote.
_BOUNDARY = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"”»]))\s+(?=[\"”»]?[A-ZÅÄÖÉ0-9])")


def _ends(text: str) -> bool:
    """Whether ``text`` ends a sentence: . ! ? possibly followed by a closing quote."""
    return text.rstrip('"”»').endswith(_TERMINAL)


# Cues further apart than this are not one sentence even without a full stop between them.
_MAX_GAP_S = 2.0


def split_sentences(cues: list[tuple[float, float, str]]) -> list[str]:
    """Join cues that continue one another and split the text into sentences.

    A cue that does not end in . ! ? continues into the next one, unless a pause of more than
    2 s separates them; a fragment left without an ending is still returned (and later
    rejected as incomplete).
    """
    runs: list[str] = []
    current: list[str] = []
    last_end = None
    for start, end, text in cues:
        if current and last_end is not None and start - last_end > _MAX_GAP_S:
            runs.append(" ".join(current))
            current = []
        current.append(text)
        last_end = end
        if _ends(text):
            runs.append(" ".join(current))
            current = []
    if current:
        runs.append(" ".join(current))
    out: list[str] = []
    for run in runs:
        out.extend(part.strip() for part in _BOUNDARY.split(run) if part.strip())
    return out


# ------------------------------------------------------------------------------- cleaning

# Swedish letters (é appears in Swedish words: "idé", "armé"); anything else in a word
# (ç, ø, ü, à...) marks a foreign name or language that espeak's Swedish voice reads badly.
_WORD_CHARS = "a-zåäöé"
_ALLOWED = re.compile(rf"^[{_WORD_CHARS}{_WORD_CHARS.upper()}0-9 ,.!?:;'\"”»«–-]+$")
_DIGIT = re.compile(r"[0-9]")
_AAO = re.compile(r"[åäö]")
_TOKEN = re.compile(rf"[{_WORD_CHARS}0-9]+(?:[-'][{_WORD_CHARS}0-9]+)*", re.IGNORECASE)


# Frequent Swedish function words: a real Swedish sentence of 3+ words almost always has one.
def _wordset(text: str) -> frozenset[str]:
    return frozenset(text.split())


_SWEDISH = _wordset(
    """och i att det som en på är av för med till den har de inte om ett han men var jag
    sig från vi så kan man när år säger hon under också efter eller nu sin där vid mot ska
    skulle kommer hade blir bli här alla än mycket sedan detta får ut upp in denna dessa
    vara varit blev honom henne deras vår våra vad hur vem varför dem oss er ni du mig dig
    nya nytt första andra stora stor bara hela några många ingen inget inga över genom
    efter utan mellan hos då ju nog redan aldrig alltid vill måste kunde även samma"""
)
# Function words of the other languages found in the corpus (French, Dutch, English,
# German, Danish/Norwegian, Spanish); none of them is a common Swedish word.
_FOREIGN = _wordset(
    """le la les des du et est une avec sur pour dans qui aux au ce cette sont leur
    het een van ook niet zijn wordt naar voor deze uit bij werd
    the and of is you are was this that with have it his they which were
    und der die das ist nicht mit ein eine ich sie wir auf auch
    jeg ikke hvad hvor af og paa
    el los las por que con"""
)
# Speech-recognition hallucinations and credits seen in the corpus.
_NOISE = re.compile(
    r"musik|textning|undertext|prenumerera|www|feilitzen|tack för att (ni|du) tittade",
    re.IGNORECASE,
)


def clean_sentence(
    text: str, *, min_words: int = 3, max_words: int = 20, digits: bool = False
) -> tuple[str | None, str]:
    """``(sentence, "")`` when ``text`` is a usable Swedish sentence, else ``(None, reason)``.

    Rules: starts with a capital and ends with . ! ? (a whole sentence, not a fragment);
    Swedish letters and plain punctuation only; no digits unless ``digits`` (espeak reads
    "1700-talet" or "86 000" in ways a transcript cannot pin down); ``min_words``..
    ``max_words`` words; more Swedish evidence (function words, words with å ä ö) than
    foreign function words; no
    all-caps titles, no word loops, no recogniser noise ("Musik", credits).
    """
    s = " ".join(text.split())
    if "..." in s or "…" in s:
        return None, "unfinished (ellipsis)"
    if not s or not (s[0].isupper() or s[0] in '"”»«') or not _ends(s):
        return None, "not a whole sentence"
    if not _ALLOWED.match(s):
        return None, "characters outside Swedish text"
    if not digits and _DIGIT.search(s):
        return None, "contains digits"
    if _NOISE.search(s):
        return None, "recogniser noise or credits"
    words = _TOKEN.findall(s)
    if len(words) < min_words:
        return None, "too short"
    if len(words) > max_words:
        return None, "too long"
    caps = sum(1 for w in words if len(w) > 1 and w.isupper())
    if caps * 10 > len(words) * 3:
        return None, "all-caps title"
    lower = [w.lower() for w in words]
    if Counter(lower).most_common(1)[0][1] > 3 or len(set(lower)) * 2 < len(lower):
        return None, "repeated words"
    # Evidence of Swedish: function words, and words spelt with å ä ö.
    swedish = sum(1 for w in lower if w in _SWEDISH or _AAO.search(w))
    foreign = sum(1 for w in lower if w in _FOREIGN)
    if swedish == 0 or foreign >= swedish:
        return None, "not Swedish"
    return s, ""


def corpus_files(root: str | Path | None = None) -> list[Path]:
    """The corpus' SRT files in a fixed (sorted) order."""
    base = Path(root) if root else corpus_dir()
    files = sorted(base.rglob("*.srt"))
    if not files:
        raise ValueError(f"no .srt files under {base}")
    return files


def file_sentences(
    path: Path,
    *,
    min_words: int = 3,
    max_words: int = 20,
    digits: bool = False,
    rejected: Counter[str] | None = None,
) -> list[str]:
    """Usable sentences of one SRT file, each once, in spoken order (see clean_sentence)."""
    seen: set[str] = set()
    out: list[str] = []
    for candidate in split_sentences(parse_srt(path.read_text("utf-8", errors="replace"))):
        sentence, reason = clean_sentence(
            candidate, min_words=min_words, max_words=max_words, digits=digits
        )
        if sentence is None or sentence_key(sentence) in seen:
            if rejected is not None:
                rejected[reason or "duplicate"] += 1
            continue
        seen.add(sentence_key(sentence))
        out.append(sentence)
    return out


def sentence_key(text: str) -> str:
    """Identity of a sentence for de-duplication: its words, lower-cased."""
    return " ".join(_TOKEN.findall(text.lower()))


@functools.lru_cache(maxsize=4)
def load_sentences(
    min_words: int = 3, max_words: int = 20, *, digits: bool = False, root: str | None = None
) -> tuple[tuple[Sentence, ...], CorpusStats]:
    """Every usable sentence of the corpus, each once, in file order, and what was cut why.

    A full pass takes several seconds (191k candidate sentences); the synthetic source does
    not need it (it reads a few files, see ``synthetic.py``). Used for statistics.
    """
    base = Path(root) if root else corpus_dir()
    files = corpus_files(base)
    seen: set[str] = set()
    kept: list[Sentence] = []
    rejected: Counter[str] = Counter()
    n_cues = n_candidates = 0
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        cues = parse_srt(text)
        n_cues += len(cues)
        n_candidates += len(split_sentences(cues))
        origin = path.relative_to(base).as_posix()
        for sentence in file_sentences(
            path, min_words=min_words, max_words=max_words, digits=digits, rejected=rejected
        ):
            key = sentence_key(sentence)
            if key in seen:
                rejected["duplicate"] += 1
                continue
            seen.add(key)
            kept.append(Sentence(sentence, origin))
    stats = CorpusStats(
        files=len(files),
        cues=n_cues,
        candidates=n_candidates,
        kept=len(kept),
        rejected=dict(rejected.most_common()),
    )
    log.debug("journal-digital: %s", stats)
    return tuple(kept), stats
