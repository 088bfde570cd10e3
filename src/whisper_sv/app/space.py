"""The app exported as a Hugging Face Space folder (``export_space``)."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from whisper_sv.app.options import AppOptions
from whisper_sv.app.render import clock
from whisper_sv.models.references import ct2_dir

__all__ = ["export_space"]

log = logging.getLogger(__name__)

_SPACE_APP = '''\
"""whisper-sv: Swedish speech to text, with an English translation (Gradio app).

Run with `pip install -r requirements.txt && python app.py`, or as a Hugging Face Space.
The model is the CTranslate2 folder `model/` next to this file; the `whisper_sv` folder is the
toolkit's code, so nothing else needs installing.
"""

import logging
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the copy of whisper_sv next to this file wins

from whisper_sv.app.chat import AppOptions, serve  # noqa: E402

OPTIONS = AppOptions(
    model=str(HERE / "model"),
    runs_dir=None,
    hub_models=False,  # the Space serves model/ only
    # Spaces set GRADIO_SERVER_NAME=0.0.0.0; anywhere else the app stays on this machine.
    host=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
    port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
{limits})

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    serve(OPTIONS)
'''

_SPACE_README = """\
---
title: {title}
emoji: 🎙️
colorFrom: blue
colorTo: yellow
sdk: gradio
sdk_version: {gradio_version}
app_file: app.py
pinned: false
license: mit
---

# {title}

Swedish speech to text with Whisper, and an English translation. Send a recording, an audio or
video file, or a YouTube link. Made with whisper-sv.

- Model: `{model}` (CTranslate2, in `model/`), run with faster-whisper on CPU.
- Translation: Whisper's own speech translation (offline) by default; Google Translate
  (online) can be chosen in the page.
- Limits: uploads up to {max_file_size}, recordings up to {max_duration}.
- API: endpoint `/transcribe` (an audio file in; transcript, translation and subtitles out as
  JSON; failures raise in the client), e.g.
  `gradio_client.Client(URL).predict(handle_file("clip.wav"), api_name="/transcribe")["swedish"]`.

Run it anywhere: `pip install -r requirements.txt && python app.py`.
"""

# What the exported app imports (whisper_sv's training stack is not needed to serve).
_SPACE_REQUIREMENTS = (
    "gradio",
    "gradio_client",
    "faster-whisper",
    "ctranslate2",
    "av",
    "numpy",
    "pyyaml",
    "yt-dlp",
    "deep-translator",
    "requests",
)
# Options written into the exported app.py (the rest are the Space's host/port/model).
_SPACE_LIMITS = (
    "max_file_size",
    "max_duration_s",
    "concurrency_limit",
    "max_queue",
    "translator",
    "beam_size",
)


def export_space(
    out_dir: str | os.PathLike,
    options: AppOptions | None = None,
    *,
    title: str = "whisper-sv",
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Write a Hugging Face Space folder that serves ``options.model`` with ``python app.py``.

    The folder holds ``app.py``, ``requirements.txt``, ``README.md`` (Space front matter),
    ``model/`` (the model in CTranslate2 format, from :func:`ct2_dir`) and a copy of
    the ``whisper_sv`` package. Refuses a non-empty ``out_dir``.
    """
    from importlib import metadata

    options = options or AppOptions()
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty; pass a new or empty folder to --export-space")
    say = progress or log.info
    say(f"preparing the model {options.model} in CTranslate2 format")
    ct2 = ct2_dir(options.model)
    out.mkdir(parents=True, exist_ok=True)
    say(f"copying the model to {out / 'model'}")
    shutil.copytree(ct2, out / "model", ignore=shutil.ignore_patterns(".*", "*.lock"))
    package = Path(__file__).resolve().parents[1]  # the whole whisper_sv package
    shutil.copytree(package, out / "whisper_sv", ignore=shutil.ignore_patterns("__pycache__"))

    def pinned(name: str) -> str:
        try:
            return f"{name}=={metadata.version(name)}"
        except metadata.PackageNotFoundError:
            return name

    (out / "requirements.txt").write_text(
        "\n".join(pinned(n) for n in _SPACE_REQUIREMENTS) + "\n", encoding="utf-8"
    )
    limits = "".join(f"    {k}={getattr(options, k)!r},\n" for k in _SPACE_LIMITS)
    (out / "app.py").write_text(_SPACE_APP.format(limits=limits), encoding="utf-8")
    (out / "README.md").write_text(
        _SPACE_README.format(
            title=title,
            gradio_version=metadata.version("gradio"),
            model=options.model,
            max_file_size=options.max_file_size,
            max_duration=clock(options.max_duration_s),
        ),
        encoding="utf-8",
    )
    say(f"wrote {out}: run it with `cd {out} && python app.py`")
    return out
