"""Serving a model: options and typed results, the decoding backends and their fallback, the
transcriber, invented-text rules, subtitles, translation, evaluation against a manifest, links.
Imports core, models and data; never train.

The names below are what other subpackages may use; each loads its module on first use.
"""

from whisper_sv import lazy_exports

_WHERE = {
    "AUTO": "types",
    "DECODER_BACKENDS": "transcriber",
    "DEVICES": "transcriber",
    "Dropped": "transcriber",
    "evaluate": "evaluate",
    "fetch_audio": "links",
    "format_transcript": "transcriber",
    "FORMATS": "transcriber",
    "LinkAudio": "links",
    "LinkError": "links",
    "LinkOptions": "links",
    "links": "links",
    "LoadOptions": "types",
    "looks_like_link": "links",
    "read_manifest": "evaluate",
    "Segment": "transcriber",
    "SubtitleOptions": "subtitles",
    "subtitles": "transcriber",
    "TranscribeOptions": "transcriber",
    "Transcriber": "transcriber",
    "Transcript": "transcriber",
    "translate": "translate",
    "translate_speech": "translate",
    "translate_text": "translate",
    "TranslateOptions": "translate",
    "translation_model": "translation_model",
    "TranslationUnavailable": "translate",
    "TRANSLATORS": "translate",
    "write_report": "evaluate",
    "YOUTUBE_HOSTS": "links",
}
__all__ = [
    "AUTO",
    "DECODER_BACKENDS",
    "DEVICES",
    "Dropped",
    "evaluate",
    "fetch_audio",
    "format_transcript",
    "FORMATS",
    "LinkAudio",
    "LinkError",
    "LinkOptions",
    "links",
    "LoadOptions",
    "looks_like_link",
    "read_manifest",
    "Segment",
    "SubtitleOptions",
    "subtitles",
    "TranscribeOptions",
    "Transcriber",
    "Transcript",
    "translate",
    "translate_speech",
    "translate_text",
    "TranslateOptions",
    "translation_model",
    "TranslationUnavailable",
    "TRANSLATORS",
    "write_report",
    "YOUTUBE_HOSTS",
]
__getattr__ = lazy_exports(__name__, _WHERE)
