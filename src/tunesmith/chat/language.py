"""Which language a chat message is in, among the ones the crisis resources cover.

Short chat messages defeat n-gram language identifiers trained on documents less than one would
think, but they are also what stop words are good at: almost every sentence has a few of them.
Each language scores its stop-word hits plus a few letters only it uses; the best score wins,
English when nothing stands out (the default locale's resources are in English).
"""

from __future__ import annotations

import re
import unicodedata

LANGS = ("en", "fr", "es", "de", "it", "pt")

_STOP = {
    "en": "i me my myself you the a an and is are am was were be been to of in on it that this what with for not "
    "don't can't i'm it's have has do just so but no all about would will they he she we there",
    "fr": "je j' me moi mon ma mes tu te toi vous le la les un une des et est suis sont pas ne n' plus que qui "
    "quoi avec pour dans sur ce cette c'est ça il elle nous on rien tout veux peux fait très mais ou",
    "es": "yo me mi mis tú te el la los las un una unos y es soy estoy son no que qué con para por en este esta "
    "eso lo nada todo quiero puedo muy pero más ya hay él ella nosotros también porque",
    "de": "ich mich mir mein meine du dich dir der die das ein eine und ist bin sind nicht kein keine dass was "
    "mit für in auf es er sie wir nichts alles will kann sehr aber oder auch noch schon mehr",
    "it": "io mi me mio mia miei tu ti il lo la gli le un uno una e è sono non che cosa con per in su questo "
    "questa niente tutto voglio posso molto ma o più già ho hai ha perché anche",
    "pt": "eu me mim meu minha meus você te o a os as um uma e é sou estou são não que com para por em no na "
    "este esta isso nada tudo quero posso muito mas ou mais já tenho tem ele ela nós também",
}
STOPWORDS = {lang: frozenset(words.split()) for lang, words in _STOP.items()}
# letters that mark one language among these six (ü/ö/ä are German; ñ Spanish; ã/õ Portuguese; ...)
_LETTERS = {"de": "äöüß", "es": "ñ¿¡", "pt": "ãõ", "fr": "œæ", "it": "ìò"}
_TOKEN = re.compile(r"[a-zà-öø-ÿœæß]+'?")


def detect_language(text: str) -> str:
    """One of LANGS; "en" when no other language has clearly more cues."""
    t = unicodedata.normalize("NFKC", text).lower().replace("\u2019", "'")
    tokens = _TOKEN.findall(t)
    scores = {
        lang: sum(tok in words or tok.rstrip("'") in words for tok in tokens) for lang, words in STOPWORDS.items()
    }
    for lang, letters in _LETTERS.items():
        scores[lang] += 2 * sum(t.count(ch) for ch in letters)
    # accents shared by the Romance languages but absent from English
    if any(ch in t for ch in "éèêàâçîôû"):
        scores["fr"] += 1
    best = max(LANGS, key=lambda lang: (scores[lang], lang == "en"))
    return best if scores[best] > scores["en"] else "en"
