"""A per-client budget for Gradio's upload endpoint (``/gradio_api/upload``).

Gradio accepts any number of uploads of up to ``max_file_size`` each and keeps them until
the app stops, so one client on the network could fill the disk. When the app is bound beyond
loopback, each client address may upload at most ``count`` files and ``megabytes`` MB an hour;
beyond that the endpoint answers 429 with a sentence that says when to come back.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass

__all__ = ["LOOPBACK_HOSTS", "UploadBudget"]

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")  # binding these keeps the app on the machine
_WINDOW_S = 3_600.0  # the budget is per hour (a sliding window)


@dataclass
class UploadBudget:
    """Uploads each client address made in the last hour, and the refusal beyond the budget."""

    count: int  # uploads one client address may make an hour
    megabytes: float  # megabytes one client address may upload an hour (declared lengths)

    def __post_init__(self) -> None:
        if self.count < 1 or self.megabytes <= 0:
            raise ValueError("the upload budget needs count >= 1 and megabytes > 0")
        self._seen: dict[str, deque[tuple[float, int]]] = defaultdict(deque)
        self._lock = threading.Lock()

    def refusal(self, client: str, size: int, now: float | None = None) -> str:
        """ "" and the upload counted, or the sentence that refuses it (nothing counted)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            seen = self._seen[client]
            while seen and now - seen[0][0] > _WINDOW_S:
                seen.popleft()
            used = sum(n for _, n in seen)
            if len(seen) >= self.count or used + size > self.megabytes * 1_000_000:
                wait_min = max(1, round((_WINDOW_S - (now - seen[0][0])) / 60)) if seen else 60
                return (
                    f"Upload budget used up ({self.count} files or {self.megabytes:g} MB an hour "
                    f"per client); try again in about {wait_min} min."
                )
            seen.append((now, size))
            return ""

    def dependency(self):
        """A FastAPI dependency that applies the budget to POSTs on ``.../upload``."""
        import fastapi

        async def upload_budget(request: fastapi.Request) -> None:
            if request.method != "POST" or not request.url.path.endswith("/upload"):
                return
            client = request.client.host if request.client else "unknown"
            size = int(request.headers.get("content-length") or 0)
            if problem := self.refusal(client, size):
                raise fastapi.HTTPException(status_code=429, detail=problem)

        # FastAPI reads the annotation to inject the request; this module's annotations are
        # strings (``from __future__``) and fastapi is imported here only, so name it.
        upload_budget.__annotations__["request"] = fastapi.Request
        return fastapi.Depends(upload_budget)
