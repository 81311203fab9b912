"""The stories and neutral dialogues the vectors are built from: chat backends (``backends``),
generation (``generate``), parsing replies (``parsing``), the leak filter that rejects a story
naming its emotion (``leak``), and the validated judge that checks a story's emotion can be
recognised (``judge``)."""
