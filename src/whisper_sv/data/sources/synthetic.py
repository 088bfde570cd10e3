"""The embedded default source: natural Swedish sentences spoken by espeak-ng voices.

Sentences come from the journal-digital newsreel corpus (``sentences.py``, CC-BY-NC-4.0);
voices are espeak-ng's Swedish voice with its variants (``sv+m3``, ``sv+f2``, ``sv+klatt``...),
each at one or more fixed speaking rates and pitches: a *speaker* is one such persona,
``"sv+f3@r165p60"`` (variant f3, 165 words/min, pitch 60).

Splits never share a sentence, and are made from different newsreels (every corpus file feeds
one split only), so a sentence's neighbours do not leak between splits either. Test voices are
never heard in training; validation voices are, by default, a third disjoint set, so that
choosing a checkpoint on validation rewards the same thing the test measures (new voices and
new sentences) without looking at the test voices. Validation may share training voices if
configured; it may never share test voices.

Everything is a pure function of the options: same options, same items, same audio.
Nothing is rendered until ``load``, which needs only the item, so workers (spawned or forked
processes) can render in parallel without reading the corpus.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from whisper_sv.data.sources import Item, espeak
from whisper_sv.data.sources import sentences as corpus

log = logging.getLogger(__name__)

__all__ = ["SyntheticOptions", "SyntheticSource", "render"]

SPLITS = ("train", "validation", "test")
# espeak's volume (100 = normal): at 100 most variants peak at 0.85-1.0 of full scale and
# resampling overshoots past it; 80 leaves headroom (measured on the default 500 sentences:
# median peaks 0.35-0.73, one klatt2 sentence still clips inside espeak).
_VOLUME = 80
_PEAK = 0.99  # highest sample value after resampling: louder output is scaled down


@dataclass(frozen=True)
class SyntheticOptions:
    seed: int = 0  # picks the newsreels, the sentences and each voice's rate/pitch
    train: int = 400  # sentences in the train split
    validation: int = 50  # sentences in the validation split
    test: int = 50  # sentences in the test split
    # espeak-ng variants (files in espeak-ng-data/voices/!v) speaking each split.
    voices_train: tuple[str, ...] = (
        "m1", "m2", "m3", "m4", "m5", "f1", "f2", "f3", "klatt", "klatt2",
    )  # fmt: skip
    voices_validation: tuple[str, ...] = ("m6", "f4")  # may overlap train, never test
    voices_test: tuple[str, ...] = ("m7", "f5", "klatt3")  # never used in train
    speakers_per_voice: int = 2  # rate/pitch personas drawn per variant
    rate: tuple[int, int] = (140, 195)  # speaking rate range, words per minute
    pitch: tuple[int, int] = (30, 70)  # base pitch range, 0-100 (50 = the variant's own)
    min_words: int = 3  # shortest sentence kept, in words
    max_words: int = 20  # longest sentence kept, in words (20 words ~ 7 s of speech)
    digits: bool = False  # keep sentences with digits (espeak's reading of them is ambiguous)
    sentences_per_file: int = 4  # at most this many sentences from one newsreel (variety)
    corpus: str = ""  # folder of .srt files to draw sentences from ("" = journal-digital)

    def __post_init__(self) -> None:
        _validate(self)

    def count(self, split: str) -> int:
        return {"train": self.train, "validation": self.validation, "test": self.test}[split]

    def voices(self, split: str) -> tuple[str, ...]:
        return {
            "train": self.voices_train,
            "validation": self.voices_validation,
            "test": self.voices_test,
        }[split]


def _validate(o: SyntheticOptions) -> None:
    for split in SPLITS:
        if o.count(split) < 0:
            raise ValueError(f"{split} must be >= 0 sentences, got {o.count(split)}")
        if o.count(split) and not o.voices(split):
            raise ValueError(f"voices_{split} is empty but {split} asks for {o.count(split)}")
    if o.train + o.validation + o.test == 0:
        raise ValueError("all splits are empty: set train, validation or test above 0")
    known = set(espeak.variants())
    for split in SPLITS:
        bad = [v for v in o.voices(split) if v not in known]
        if bad:
            raise ValueError(
                f"voices_{split}: unknown espeak-ng variant(s) {bad}; "
                f"choose from: {', '.join(sorted(known))}"
            )
        if len(set(o.voices(split))) != len(o.voices(split)):
            raise ValueError(f"voices_{split} lists a voice twice: {list(o.voices(split))}")
    shared = sorted(set(o.voices_test) & set(o.voices_train))
    if shared:
        raise ValueError(
            f"test voices must be unseen in training: remove {shared} from voices_test "
            "or voices_train"
        )
    shared = sorted(set(o.voices_test) & set(o.voices_validation))
    if shared:
        raise ValueError(
            f"validation must not use test voices: remove {shared} from voices_validation"
        )
    for name, (lo, hi), (mn, mx) in (
        ("rate", o.rate, (espeak.RATE_MIN, espeak.RATE_MAX)),
        ("pitch", o.pitch, (espeak.PITCH_MIN, espeak.PITCH_MAX)),
    ):
        if not mn <= lo <= hi <= mx:
            raise ValueError(f"{name} must be (low, high) with {mn} <= low <= high <= {mx}")
    if not 1 <= o.min_words <= o.max_words:
        raise ValueError("need 1 <= min_words <= max_words")
    if o.corpus and not Path(o.corpus).expanduser().is_dir():
        raise ValueError(f"corpus {o.corpus!r} is not a folder of .srt files")
    if o.speakers_per_voice < 1 or o.sentences_per_file < 1:
        raise ValueError("speakers_per_voice and sentences_per_file must be >= 1")


@dataclass(frozen=True)
class Speaker:
    variant: str  # espeak-ng variant, e.g. "f3"
    rate: int  # words per minute
    pitch: int  # 0-100

    @property
    def voice(self) -> str:
        return f"sv+{self.variant}"

    @property
    def id(self) -> str:
        return f"{self.voice}@r{self.rate}p{self.pitch}"


def speakers(options: SyntheticOptions, split: str) -> list[Speaker]:
    """The personas speaking ``split``: each variant's rate and pitch are drawn from the seed
    and the variant only, so a voice shared by two splits is the same speaker in both."""
    out = []
    for variant in options.voices(split):
        for k in range(options.speakers_per_voice):
            rng = random.Random(f"{options.seed}:speaker:{variant}:{k}")
            out.append(Speaker(variant, rng.randint(*options.rate), rng.randint(*options.pitch)))
    return out


def render(sentence: str, speaker: Speaker) -> np.ndarray:
    """Speak ``sentence`` as ``speaker``: (n,) float32 at 16 kHz, peak <= 0.99."""
    from scipy.signal import resample_poly

    from whisper_sv.core.audio import SAMPLE_RATE

    pcm, rate = espeak.synthesize(
        sentence, voice=speaker.voice, rate=speaker.rate, pitch=speaker.pitch, volume=_VOLUME
    )
    audio = pcm.astype(np.float32) / 32768.0
    if rate != SAMPLE_RATE:
        # Polyphase resampling with scipy's Kaiser-windowed FIR: 22050 -> 16000 is 320/441,
        # exact, with the anti-alias filter espeak's 11 kHz band needs.
        g = np.gcd(SAMPLE_RATE, rate)
        audio = resample_poly(audio, SAMPLE_RATE // g, rate // g).astype(np.float32)
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    if peak > _PEAK:
        audio *= _PEAK / peak
    return audio


class SyntheticSource:
    """Swedish newsreel sentences spoken by espeak-ng voices; see the module docstring."""

    def __init__(self, options: SyntheticOptions | None = None) -> None:
        self.options = options or SyntheticOptions()
        self.name = "synthetic"
        self._items: dict[str, list[Item]] | None = None

    def splits(self) -> list[str]:
        return [s for s in SPLITS if self.options.count(s) > 0]

    def items(self, split: str) -> Iterator[Item]:
        if split not in self.splits():
            raise ValueError(f"synthetic has no split {split!r}; it has {self.splits()}")
        if self._items is None:
            self._items = _plan(self.options)
        yield from self._items[split]

    def load(self, item: Item) -> np.ndarray:
        from whisper_sv.core.audio import AudioError

        try:
            speaker = Speaker(item.meta["variant"], int(item.meta["rate"]), int(item.meta["pitch"]))
        except (KeyError, TypeError, ValueError) as err:
            raise AudioError(item.id, f"not a synthetic item (meta lacks {err})") from err
        try:
            return render(item.sentence, speaker)
        except espeak.EspeakError as err:
            raise AudioError(item.id, f"espeak-ng failed: {err}") from err

    def describe(self) -> dict:
        return {
            "source": "synthetic",
            "options": dataclasses.asdict(self.options),
            "engine": f"espeak-ng via espeakng-loader {espeak.version()}",
            "text": _text_origin(self.options),
        }

    def __getstate__(self) -> dict:
        # Workers only render; they rebuild the plan themselves if they ever list items.
        return {"options": self.options, "name": self.name, "_items": None}


def _plan(options: SyntheticOptions) -> dict[str, list[Item]]:
    """Draw sentences newsreel by newsreel and deal them to the splits and speakers.

    Files are visited in a seeded order and filled into test first, then validation, then
    train, so changing the train size never changes the test set. A file feeds one split only.
    """
    base = Path(options.corpus).expanduser() if options.corpus else corpus.corpus_dir()
    files = corpus.corpus_files(base)
    order = list(files)
    random.Random(f"{options.seed}:files").shuffle(order)
    wanted = [(s, options.count(s)) for s in ("test", "validation", "train") if options.count(s)]
    drawn: dict[str, list[tuple[str, str]]] = {s: [] for s in SPLITS}
    seen: set[str] = set()
    slot = 0
    for path in order:
        if slot == len(wanted):
            break
        split, n = wanted[slot]
        origin = path.relative_to(base).as_posix()
        fresh = [
            s
            for s in corpus.file_sentences(
                path,
                min_words=options.min_words,
                max_words=options.max_words,
                digits=options.digits,
            )
            if corpus.sentence_key(s) not in seen
        ]
        rng = random.Random(f"{options.seed}:pick:{origin}")
        for sentence in rng.sample(fresh, min(options.sentences_per_file, len(fresh))):
            seen.add(corpus.sentence_key(sentence))
            drawn[split].append((sentence, origin))
            if len(drawn[split]) == n:
                slot += 1
                break
    if slot < len(wanted):
        have = sum(len(v) for v in drawn.values())
        raise ValueError(
            f"the corpus gave only {have} sentences for {sum(n for _, n in wanted)} asked; "
            "raise sentences_per_file or lower train/validation/test"
        )

    plan: dict[str, list[Item]] = {}
    for split in SPLITS:
        personas = speakers(options, split)
        random.Random(f"{options.seed}:deal:{split}").shuffle(personas)
        items = []
        for i, (sentence, origin) in enumerate(drawn[split]):
            sp = personas[i % len(personas)]  # round robin: every speaker gets a fair share
            digest = hashlib.sha1(f"{sentence}\0{sp.id}".encode()).hexdigest()[:12]
            items.append(
                Item(
                    id=f"syn-{split}-{i:05d}-{digest}",
                    split=split,
                    sentence=sentence,
                    audio=None,
                    speaker=sp.id,
                    meta={
                        "source": "synthetic",
                        "voice": sp.voice,
                        "variant": sp.variant,
                        "rate": sp.rate,
                        "pitch": sp.pitch,
                        "gender": espeak.variant_gender(sp.variant),
                        "origin": f"{'srt' if options.corpus else 'journal-digital'}:{origin}",
                    },
                )
            )
        plan[split] = items
    return plan


def _text_origin(options: SyntheticOptions) -> str:
    """Where the sentences come from, with the licence, for the store manifest."""
    if options.corpus:
        return f"SRT files under {options.corpus}"
    version = _dist_version("journal-digital")
    return f"journal-digital {version} ({corpus.CORPUS_LICENSE})"


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"
