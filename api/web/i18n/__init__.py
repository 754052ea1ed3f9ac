"""The web UI's message catalogues, one JSON file per language (`zh-CN.json`, the default,
and `en.json`), with the same keys; `{name}` marks a value filled in. Read once at import;
pure data afterwards, used on the event loop."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Final

LANGS: Final = ("zh-CN", "en")
DEFAULT_LANG: Final = "zh-CN"
LANG_COOKIE: Final = "nvr_lang"
SCRIPT_PREFIXES: Final = ("js.", "state.", "badge.", "cause.", "picture.", "problem.")


def _load(lang: str) -> dict[str, str]:
    path = Path(__file__).parent / f"{lang}.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ValueError(f"{path}: expected an object of strings")
    return data


CATALOGUES: Final[dict[str, dict[str, str]]] = {lang: _load(lang) for lang in LANGS}


def pick(asked: str | None, cookie: str | None) -> str:
    """The language of a page: the query's `lang`, else the cookie's, else zh-CN."""
    for lang in (asked, cookie):
        if lang in LANGS:
            return lang
    return DEFAULT_LANG


class Text:
    """The messages of one language; a missing key shows as itself (and a test catches it)."""

    def __init__(self, lang: str) -> None:
        self.lang = lang
        self.messages = CATALOGUES[lang]

    def __call__(self, key: str, **values: object) -> str:
        text = self.messages.get(key, key)
        return text.format(**values) if values else text

    def has(self, key: str) -> bool:
        return key in self.messages

    def script(self) -> dict[str, str]:
        """The messages page scripts use (keys starting `js.`, and the names of states,
        badges and outage causes)."""
        return {k: v for k, v in self.messages.items() if k.startswith(SCRIPT_PREFIXES)}
