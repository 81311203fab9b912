"""Word lists read from installed packages' data files (the packages' code is never imported):
the NRC Word-Emotion Association Lexicon (``load_nrc``), the concept axis of the steering scores
(``steering.scores``) and the baseline of the real-text checks (``reading.text_checks``).

``package_data_path`` finds a data file inside an installed package (also the corpora of real
text that ship as package data, ``reading.corpora``). The errors these raise are those of the
modules that use them, defined here so that every stage above can raise and catch them:
``CorpusError`` (a corpus or data file that cannot be read, ``reading.corpora``) and
``CheckError`` (a check that cannot run as configured, ``reading.text_checks``).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

NRC_PACKAGE = "nrclex"
NRC_FILE = ("data", "nrc_en.json")
NRC_SOURCE = "nrclex==4.1.0:nrclex/data/nrc_en.json"
NRC_CITATION = ("NRC Word-Emotion Association Lexicon (Mohammad & Turney 2013, Computational "
                "Intelligence 29(3)), as shipped by nrclex 4.1.0 (MIT; the lexicon itself is "
                "for research use)")
NRC_CATEGORIES = ("anger", "anticipation", "disgust", "fear", "joy", "negative", "positive",
                  "sadness", "surprise", "trust")


class CorpusError(ValueError):
    """A corpus that cannot be read as asked (bad format, missing column, missing package)."""


class CheckError(ValueError):
    """A check that cannot be run as configured (a bad label map, a missing column)."""


def package_data_path(package: str, *parts: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError(f"package {package!r} is not installed; run `make install`")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    if not path.exists():
        raise CorpusError(f"{path} not found in the installed package {package!r}")
    return path


def load_nrc() -> dict[str, frozenset[str]]:
    """The NRC word -> categories lexicon from the installed ``nrclex`` package's data file
    (the package's code, which needs TextBlob, is never imported)."""
    try:
        path = package_data_path(NRC_PACKAGE, *NRC_FILE)
    except CorpusError as err:
        raise CheckError(f"the NRC lexicon baseline needs {err}") from None
    data = json.loads(path.read_text(encoding="utf-8"))
    return {str(w): frozenset(map(str, cats)) for w, cats in data.items()}
