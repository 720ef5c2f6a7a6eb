"""Small text-classification tasks built locally: templates × word lists, and the stdlib's own source.

Nothing is downloaded. Every task is deterministic given its seed, and its held-out split tests
generalisation rather than memory: the sentiment and topic tasks hold out both words and templates
(no held-out sentence shares either with a training sentence), and the code/prose task holds out
whole source files.
"""

from __future__ import annotations

import ast
import hashlib
import io
import os
import random
import tokenize
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

Example = tuple[str, int]


@dataclass(frozen=True)
class Task:
    """A classification task: ``train`` and ``heldout`` are lists of ``(text, label index)``."""

    name: str
    description: str
    labels: tuple[str, ...]
    train: tuple[Example, ...]
    heldout: tuple[Example, ...]

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def summary(self) -> dict:
        return {"name": self.name, "description": self.description, "labels": list(self.labels),
                "train": len(self.train), "heldout": len(self.heldout)}


# ---------------------------------------------------------------- word lists

_POSITIVE = """wonderful excellent delightful superb fantastic brilliant charming lovely amazing great
enjoyable pleasant marvelous terrific outstanding splendid magnificent impressive beautiful fabulous
remarkable joyful heartwarming uplifting refreshing stunning perfect inspiring gorgeous exceptional
satisfying exquisite wholesome cheerful elegant awesome thrilling fun memorable flawless""".split()

_NEGATIVE = """terrible awful horrible dreadful boring disappointing miserable unpleasant mediocre bad
poor lousy dull tedious annoying frustrating painful ugly pathetic disgusting depressing tiresome
atrocious abysmal bland awkward clumsy gloomy irritating nasty sloppy unbearable worthless shoddy
lifeless messy rotten dismal subpar forgettable""".split()

_SENTIMENT_TEMPLATES = [
    "the movie was {w}.",
    "i thought the service was {w}.",
    "honestly, it was a {w} experience.",
    "what a {w} book!",
    "the food at this place is {w}.",
    "my stay at the hotel was {w}.",
    "overall the concert felt {w}.",
    "this phone is {w}, to be honest.",
    "the whole trip was {w}.",
    "her new album sounds {w}.",
    "the ending of the show was {w}.",
    "our meeting today was {w}.",
    "the customer support was {w}.",
    "the game itself is {w}.",
    "i found the lecture {w}.",
    "the new update is {w}.",
    "dinner last night was {w}.",
]

_TOPICS = {
    "sports": """football, tennis, basketball, marathon, goalkeeper, referee, olympics, stadium, cricket,
        hockey, swimming, cycling, boxing, golf, baseball, volleyball, championship, tournament, athlete,
        coach, skiing, rugby, wrestling, sprinting, penalty kick, slam dunk, world cup, home run,
        fitness training, the league table, the transfer window, the halftime score""",
    "science": """physics, chemistry, molecules, telescope, genetics, astronomy, laboratory, neurons,
        photosynthesis, quantum mechanics, fossils, evolution, bacteria, electrons, galaxies, microscope,
        vaccines, geology, enzymes, black holes, the periodic table, particle physics, plate tectonics,
        dark matter, cell biology, the scientific method, climate research, chemical reactions""",
    "food": """pizza, pasta, sushi, chocolate, bread, cheese, soup, salad, barbecue, dessert, recipes,
        noodles, pancakes, curry, omelettes, tacos, dumplings, baking, vegetables, spices, burgers, steak,
        ice cream, sandwiches, fried rice, apple pie, grilled fish, fresh herbs, breakfast cereal,
        roast chicken""",
    "music": """guitar, piano, symphony, jazz, concert, orchestra, violin, drums, album, opera, choir,
        melody, lyrics, saxophone, songwriting, composer, cello, chords, rhythm, hip hop, rock bands,
        the new single, classical music, live gigs, the music charts, sheet music, a string quartet,
        the drum solo""",
}

_TOPIC_TEMPLATES = [
    "the article is all about {w}.",
    "i read a long story on {w} today.",
    "we talked about {w} the whole evening.",
    "a new podcast episode covers {w}.",
    "my brother is obsessed with {w}.",
    "the documentary focused on {w}.",
    "she wrote her essay about {w}.",
    "there is a magazine devoted to {w}.",
    "the class this week is on {w}.",
    "he keeps posting about {w}.",
    "the exhibition explores {w}.",
    "tonight's lecture is about {w}.",
    "they started a club for {w}.",
    "the newsletter was mostly {w}.",
]


def _words(spec: str) -> list[str]:
    """A comma-separated word list (entries may be phrases)."""
    return [" ".join(w.split()) for w in spec.split(",") if w.strip()]


def _split(items: list[str], frac: float, rng: random.Random) -> tuple[list[str], list[str]]:
    """Shuffle a copy and split it: (train, heldout), at least one item each."""
    items = sorted(set(items))
    rng.shuffle(items)
    n_held = max(1, round(len(items) * frac))
    return items[n_held:], items[:n_held]


def _template_task(name: str, description: str, vocab: dict[str, list[str]], templates: list[str],
                   seed: int, max_train: int | None, max_heldout: int | None) -> Task:
    """Held-out sentences use held-out templates filled with held-out words, so neither was trained on."""
    rng = random.Random(f"{name}:{seed}")
    train_t, held_t = _split(templates, 0.3, rng)
    labels = tuple(vocab)
    train: list[Example] = []
    heldout: list[Example] = []
    for label, words in enumerate(vocab.values()):
        train_w, held_w = _split(words, 0.3, rng)
        train += [(t.format(w=w), label) for t in train_t for w in train_w]
        heldout += [(t.format(w=w), label) for t in held_t for w in held_w]
    return Task(name, description, labels,
                _balanced(train, len(labels), max_train, rng), _balanced(heldout, len(labels), max_heldout, rng))


def _balanced(examples: list[Example], n_labels: int, limit: int | None, rng: random.Random) -> tuple[Example, ...]:
    """Shuffle; keep at most ``limit`` examples with (as far as the data allows) equal counts per label."""
    examples = sorted(examples)
    rng.shuffle(examples)
    if limit is not None and limit < len(examples):
        per = -(-limit // n_labels)
        kept, counts = [], [0] * n_labels
        for text, label in examples:
            if counts[label] < per:
                kept.append((text, label))
                counts[label] += 1
        examples = kept[:limit]
    return tuple(examples)


def sentiment(seed: int = 0, max_train: int | None = None, max_heldout: int | None = None) -> Task:
    return _template_task(
        "sentiment",
        "Is a short review positive or negative? Templates × adjective lists; held-out adjectives and templates.",
        {"negative": _NEGATIVE, "positive": _POSITIVE}, _SENTIMENT_TEMPLATES, seed, max_train, max_heldout)


def topic(seed: int = 0, max_train: int | None = None, max_heldout: int | None = None) -> Task:
    return _template_task(
        "topic",
        "Which of four topics (sports, science, food, music) a sentence is about; held-out nouns and templates.",
        {k: _words(v) for k, v in _TOPICS.items()}, _TOPIC_TEMPLATES, seed, max_train, max_heldout)


# ---------------------------------------------------------------- code or prose, from the stdlib


def stdlib_dir() -> Path:
    """The Python standard library's source folder (where ``os.py`` lives)."""
    return Path(os.__file__).resolve().parent


_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test", "lib2to3",
              "ensurepip", "turtledemo", "pydoc_data", "encodings"}  # the last two: mostly data tables
_PER_FILE = 40  # lines per class taken from one file, so no single file dominates


@lru_cache(maxsize=1)
def stdlib_files() -> tuple[Path, ...]:
    """Every ``.py`` file of the stdlib (tests and vendored packages left out), sorted by relative path."""
    root = stdlib_dir()
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        found += [Path(dirpath) / f for f in filenames if f.endswith(".py")]
    return tuple(sorted(found, key=lambda p: p.relative_to(root).as_posix()))


def is_heldout_file(path: Path, seed: int, fraction: float = 0.2) -> bool:
    """A stable, seeded file-level split: hash of the relative path and the seed."""
    rel = path.relative_to(stdlib_dir()).as_posix()
    digest = hashlib.sha256(f"{seed}:{rel}".encode()).digest()
    return int.from_bytes(digest[:4], "big") < fraction * 2**32


def code_and_prose_lines(source: str) -> tuple[list[str], list[str]]:
    """(code lines, prose lines) of one Python source file.

    Prose: comment text (without the ``#``) and docstring lines, at least four words, not doctest.
    Code: lines outside docstrings and comments, with no comment on them, at least 12 characters.
    """
    try:
        tree = ast.parse(source)
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (SyntaxError, ValueError, tokenize.TokenError, RecursionError):
        return [], []
    lines = source.splitlines()
    doc_lines: set[int] = set()
    prose: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = getattr(node, "body", None)
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                    and isinstance(body[0].value.value, str):
                expr = body[0]
                doc_lines.update(range(expr.lineno, (expr.end_lineno or expr.lineno) + 1))
                prose += [ln.strip() for ln in body[0].value.value.splitlines()]
    comment_lines: set[int] = set()
    string_lines: set[int] = set()
    for tok in tokens:
        if tok.type == tokenize.COMMENT:
            comment_lines.add(tok.start[0])
            prose.append(tok.string.lstrip("#!: ").strip())
        elif tok.type == tokenize.STRING and tok.start[0] != tok.end[0]:
            string_lines.update(range(tok.start[0], tok.end[0] + 1))
    prose = [p for p in prose if _is_prose(p)]
    code = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if number in doc_lines or number in comment_lines or number in string_lines or len(text) < 12 \
                or text[0] in "'\"" or text[:2] in ("f'", 'f"', "r'", 'r"', "b'", 'b"'):
            continue
        code.append(text)
    return code, prose


def _is_prose(text: str) -> bool:
    words = text.split()
    if len(words) < 4 or text.startswith((">>>", "...", "$", "-*-")):
        return False
    letters = sum(c.isalpha() or c.isspace() for c in text)
    return letters >= 0.85 * len(text)


def code_or_prose(seed: int = 0, max_train: int | None = None, max_heldout: int | None = None) -> Task:
    """Lines of stdlib source: code vs. comment/docstring prose. Held-out lines come from held-out files.

    Files are visited in a seeded order until every pool (train/held-out × code/prose) holds twice what
    is asked (2000 train / 400 held-out lines when unlimited), at most ``_PER_FILE`` lines per class a file.
    """
    rng = random.Random(f"code:{seed}")
    want = {False: max_train or 2000, True: max_heldout or 400}
    files = list(stdlib_files())
    random.Random(f"files:{seed}").shuffle(files)
    pools: dict[bool, tuple[set[Example], set[Example]]] = {False: (set(), set()), True: (set(), set())}
    for path in files:
        if all(len(pool) >= want[held] for held, pair in pools.items() for pool in pair):
            break
        try:
            code, prose = code_and_prose_lines(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            continue
        file_rng = random.Random(f"{seed}:{path.name}")
        code_pool, prose_pool = pools[is_heldout_file(path, seed)]
        code_pool.update((line[:160], 0) for line in file_rng.sample(code, min(len(code), _PER_FILE)))
        prose_pool.update((line[:160], 1) for line in file_rng.sample(prose, min(len(prose), _PER_FILE)))
    train = sorted(pools[False][0] | pools[False][1])
    train_texts = {t for t, _ in train}
    # A line that also occurs in a training file never counts as held out.
    heldout = sorted(e for e in pools[True][0] | pools[True][1] if e[0] not in train_texts)
    return Task("code", "Is a line of Python's own standard library code, or prose from a comment or docstring? "
                "Held-out lines come from held-out files.", ("code", "prose"),
                _balanced(train, 2, max_train, rng), _balanced(heldout, 2, max_heldout, rng))


TASKS = {"sentiment": sentiment, "topic": topic, "code": code_or_prose}


@lru_cache(maxsize=32)
def get(name: str, seed: int = 0, max_train: int | None = None, max_heldout: int | None = None) -> Task:
    """A task by name, at most ``max_train`` / ``max_heldout`` examples (label-balanced). Cached."""
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name](seed, max_train=max_train, max_heldout=max_heldout)
