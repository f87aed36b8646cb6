"""Human-translated UI strings from Django's gettext catalogues (``django`` package, BSD-3).

Why: the only real, human-made parallel text that installs offline in many languages. Every
``locale/<lang>/LC_MESSAGES/django.po`` under the installed package (core + contrib apps) is
read with ``polib``; only single-line, non-plural, non-fuzzy, translated entries are kept.
"""
from __future__ import annotations

from pathlib import Path

DEFAULT_LANGUAGES = ("de", "ja", "ru", "zh_Hans", "ar", "ko", "fr", "es")


def django_root() -> Path:
    try:
        import django
    except ImportError:
        raise ImportError("the django-xlang suite reads Django's catalogues: pip install django") from None
    return Path(django.__file__).parent


def catalogues(lang: str, root: Path | None = None) -> list[Path]:
    """All ``django.po`` files of one language, in sorted path order (deterministic)."""
    root = root or django_root()
    return sorted(root.glob(f"**/locale/{lang}/LC_MESSAGES/django.po"))


def _usable(msgid: str, msgstr: str) -> bool:
    return bool(msgid.strip()) and bool(msgstr.strip()) and "\n" not in msgid and "\n" not in msgstr


def translations(lang: str, root: Path | None = None) -> dict[str, str]:
    """English msgid -> translation; the first catalogue (sorted order) wins on duplicates."""
    try:
        import polib
    except ImportError:
        raise ImportError("reading .po catalogues needs polib: pip install 'omnivec[eval]'") from None
    out: dict[str, str] = {}
    for path in catalogues(lang, root):
        for entry in polib.pofile(str(path)):
            if entry.obsolete or entry.fuzzy or entry.msgid_plural:
                continue
            msgid, msgstr = entry.msgid.strip(), entry.msgstr.strip()
            if _usable(msgid, msgstr) and msgid not in out:
                out[msgid] = msgstr
    return out
