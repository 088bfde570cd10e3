"""LocalAgreement: which words of a re-decoded, growing buffer are stable enough to show as final.

The policy of Macháček, Dominik and Bojar (2023), "Turning Whisper into Real-Time Transcription
System" (IJCNLP-AACL 2023 demo; ufal/whisper_streaming): the buffer is decoded again every
time audio arrives, and a word is confirmed once ``n`` consecutive hypotheses agree on it as
part of their common prefix after the words already confirmed (LocalAgreement-n; n=2 is the
paper's choice). Words are compared on their normalised text ("Hej," == "hej"), so a comma
Whisper adds or drops on the next pass does not hold a word back; the newest hypothesis's
spelling and times are kept.

Pure: no model, so it is tested on hand-made hypotheses.
"""

from __future__ import annotations

from collections.abc import Sequence

from whisper_sv.infer.hallucination import normalise
from whisper_sv.infer.types import Word

__all__ = ["LocalAgreement"]

# A hypothesis word that starts this much before the last confirmed word's end is taken to be
# that word again (word times move by a frame or two between passes).
OVERLAP_SLACK_S = 0.1
# Only a hypothesis that starts within this of the last confirmed end may repeat its tail.
TAIL_WINDOW_S = 1.0
# Longest run of confirmed words looked for at the start of a hypothesis (whisper_streaming's 5).
MAX_TAIL_WORDS = 5


def _key(word: Word) -> str:
    return normalise(word.text)


class LocalAgreement:
    """Confirms the words ``n`` consecutive hypotheses agree on (LocalAgreement-n).

    ``insert(hypothesis)`` takes the words of one decoding (absolute times, in order) and
    returns the words it newly confirms; ``tentative`` is the rest of the latest hypothesis.
    """

    def __init__(self, n: int = 2) -> None:
        if not isinstance(n, int) or n < 2:
            raise ValueError(f"agreement needs n >= 2 consecutive hypotheses, not {n!r}")
        self.n = n
        self.confirmed: list[Word] = []  # every confirmed word, in order
        self._previous: list[list[Word]] = []  # the last n-1 hypotheses' unconfirmed words
        self.tentative: tuple[Word, ...] = ()  # the latest hypothesis after the confirmed words

    @property
    def confirmed_end(self) -> float:
        """End (s) of the last confirmed word; 0 before any."""
        return self.confirmed[-1].end if self.confirmed else 0.0

    def insert(self, hypothesis: Sequence[Word]) -> list[Word]:
        """The words of ``hypothesis`` confirmed now (see the module doc)."""
        new = self._unconfirmed(hypothesis)
        agreed = len(new)
        for old in self._previous[-(self.n - 1) :]:
            agreed = min(agreed, _common_prefix(new, old))
        if len(self._previous) < self.n - 1:
            agreed = 0  # too few hypotheses yet to agree
        confirmed, rest = new[:agreed], new[agreed:]
        self.confirmed += confirmed
        older = self._previous[-(self.n - 2) :] if self.n > 2 else []
        self._previous = [_unconfirmed_part(h, confirmed) for h in older] + [rest]
        self.tentative = tuple(rest)
        return confirmed

    def confirm_until(self, t: float) -> list[Word]:
        """Confirm the tentative words that end by ``t`` (s) as they stand: the audio before
        ``t`` leaves the buffer, and no later hypothesis will hold them again."""
        taken = [w for w in self.tentative if w.end <= t + 1e-3]
        if not taken:
            return []
        k = len(taken)
        self.confirmed += list(self.tentative[:k])
        self.tentative = self.tentative[k:]
        self._previous = [_unconfirmed_part(h, taken) for h in self._previous]
        return list(taken)

    def flush(self) -> list[Word]:
        """Confirm the tentative words (the stream has ended): the last hypothesis is final."""
        out = list(self.tentative)
        self.confirmed += out
        self.tentative = ()
        self._previous = []
        return out

    def _unconfirmed(self, hypothesis: Sequence[Word]) -> list[Word]:
        """``hypothesis`` without the words that are already confirmed."""
        if not self.confirmed:
            return list(hypothesis)
        end = self.confirmed_end
        new = [w for w in hypothesis if w.start > end - OVERLAP_SLACK_S]
        if new and abs(new[0].start - end) < TAIL_WINDOW_S:
            # The buffer still holds audio of confirmed words: drop their repetition.
            for size in range(min(len(self.confirmed), len(new), MAX_TAIL_WORDS), 0, -1):
                tail = [_key(w) for w in self.confirmed[-size:]]
                if [_key(w) for w in new[:size]] == tail:
                    return new[size:]
        return new


def _common_prefix(a: Sequence[Word], b: Sequence[Word]) -> int:
    k = 0
    while k < len(a) and k < len(b) and _key(a[k]) == _key(b[k]):
        k += 1
    return k


def _unconfirmed_part(hypothesis: list[Word], confirmed: list[Word]) -> list[Word]:
    """An older hypothesis with the words just confirmed taken off its front."""
    k = _common_prefix(hypothesis, confirmed)
    return hypothesis[k:]
