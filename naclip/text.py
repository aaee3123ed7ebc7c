"""The text classifier: class lines with synonyms, prompt templates, cached query embeddings."""

from __future__ import annotations

import hashlib
import itertools
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
from torch import Tensor

from naclip.io import save_torch
from naclip.progress import tqdm

Template = Callable[[str], str]
TEMPLATES: tuple[Template, ...] = tuple(OPENAI_IMAGENET_TEMPLATES)  # the 80 published with CLIP
PROMPTS_PER_BATCH = 640


@dataclass(frozen=True)
class ClassSet:
    """Class lines parsed into queries: each query (a synonym) belongs to one class."""

    lines: tuple[str, ...]
    queries: tuple[str, ...]
    query_class: tuple[int, ...]  # class index of each query

    @property
    def names(self) -> list[str]:
        """Each class's display name: its first synonym, except where classes share one.

        Where classes share a first synonym (ADE20K-847's three lines starting with "bag"), a class of one
        name keeps it and each other takes its first synonym that is no class's first synonym ("bag,
        handbag, ..." becomes "handbag"), so that every class has a name of its own.
        """
        synonyms: list[list[str]] = [[] for _ in self.lines]
        for query, index in zip(self.queries, self.query_class):
            synonyms[index].append(query)
        firsts = [names[0] for names in synonyms]
        shared = {name for name in firsts if firsts.count(name) > 1}
        return [
            next((name for name in names[1:] if name not in firsts), names[0])
            if names[0] in shared and len(names) > 1
            else names[0]
            for names in synonyms
        ]

    def plain(self, background: bool = False) -> list[str]:
        """One name per class (its display name), class 0 spelled ``background`` when it is the background."""
        names = self.names
        return ["background", *names[1:]] if background else names

    def __post_init__(self) -> None:
        if list(self.query_class) != sorted(self.query_class) or set(self.query_class) != set(range(len(self.lines))):
            raise ValueError(f"queries must come grouped by class, classes 0..{len(self.lines) - 1} in order")

    def __len__(self) -> int:
        return len(self.lines)

    @property
    def spans(self) -> tuple[tuple[int, int], ...]:
        """(first, stop) query of each class: its synonyms are queries[first:stop]."""
        stops = list(itertools.accumulate(self.query_class.count(c) for c in range(len(self.lines))))
        return tuple(zip([0, *stops[:-1]], stops))


def parse_classes(lines: Sequence[str], source: str = "class list") -> ClassSet:
    """One class per line, synonyms separated by commas ("person, person in shirt")."""
    queries, query_class = [], []
    for index, line in enumerate(lines):
        names = [name.strip() for name in line.split(",")]
        if not all(names):
            raise ValueError(f"{source}: class {index + 1} ({line!r}) has an empty name; expected 'name[, synonym...]'")
        queries += names
        query_class += [index] * len(names)
    if not lines:
        raise ValueError(f"{source}: no classes; expected one class name per line")
    classes = ClassSet(tuple(line.strip() for line in lines), tuple(queries), tuple(query_class))
    _check_unique(classes.names, source)
    return classes


def _check_unique(names: list[str], source: str) -> None:
    """Refuse two classes with the same name (first synonym), naming their line numbers."""
    lines: dict[str, list[int]] = {}
    for number, name in enumerate(names, 1):
        lines.setdefault(name, []).append(number)
    repeated = [
        f"{name!r} on lines {', '.join(map(str, numbers))}" for name, numbers in lines.items() if len(numbers) > 1
    ]
    if repeated:
        raise ValueError(f"{source}: duplicate class names: {'; '.join(repeated)}; expected each class once")


def read_class_file(path: str | os.PathLike) -> ClassSet:
    """A class file: one class per line; trailing blank lines are ignored, blank lines inside are an error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class file {str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(f"class file {str(path)!r} is not UTF-8 text ({error}); expected a UTF-8 file") from None
    lines = text.rstrip("\n").split("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            raise ValueError(f"{path}:{number}: blank line; expected one class name per line")
    return parse_classes(lines, source=str(path))


def warn_cut_prompts(
    classes: ClassSet, tokenizer: Callable, templates: Sequence[Template] = TEMPLATES, source: str = "class list"
) -> None:
    """Warn, naming the class line, where a class's longest prompt passes the tokenizer's context length.

    CLIP's tokenizer cuts such a prompt silently. Only tokenizers with CLIP's `encode` and
    `context_length` are checked; a query is measured over every template only when it may be near the limit.
    """
    encode, context = getattr(tokenizer, "encode", None), getattr(tokenizer, "context_length", None)
    if encode is None or context is None:
        return
    framing = 2 + max(len(encode(template("a"))) - 1 for template in templates)  # start, end and template tokens
    longest = [0] * len(classes)
    for query, index in zip(classes.queries, classes.query_class):
        if len(encode(query)) + framing > context - 4:  # near the limit (tokens may merge at the seams): measure
            longest[index] = max(longest[index], 2 + max(len(encode(template(query))) for template in templates))
    for number, (line, length) in enumerate(zip(classes.lines, longest), 1):
        if length > context:
            shown = line if len(line) <= 60 else f"{line[:57]}..."
            warnings.warn(
                f"{source}: class line {number} ({shown!r}) makes prompts of up to {length} tokens; the text "
                f"encoder reads {context}, the rest is cut: expected shorter names",
                stacklevel=3,
            )


@contextmanager
def _cut_to_prompts(clip: torch.nn.Module, tokens: Tensor) -> Iterator[Tensor]:
    """The tokens up to the last end-of-text token, with a causal CLIP text tower cut to match.

    With a causal mask and end-of-text (argmax) pooling, the positions after the last
    end-of-text token cannot change the result; prompts are much shorter than the context.
    The end-of-text token is found as the largest id (as argmax pooling does), never by
    counting non-zero ids: id 0 is a real token ("!"). Other text towers get every token.
    """
    mask = getattr(clip, "attn_mask", None)
    length = int(tokens.argmax(1).max()) + 1
    if getattr(clip, "text_pool_type", None) != "argmax" or mask is None or length >= mask.shape[0]:
        yield tokens
        return
    positions = clip.positional_embedding
    clip.positional_embedding = torch.nn.Parameter(positions[:length], requires_grad=False)
    clip.attn_mask = mask[:length, :length]
    try:
        yield tokens[:, :length]
    finally:
        clip.positional_embedding, clip.attn_mask = positions, mask


def encode_queries(
    clip: torch.nn.Module, tokenizer: Callable, queries: Sequence[str], templates: Sequence[Template] = TEMPLATES
) -> Tensor:
    """(Q, D) query embeddings: each template embedded and L2-normalised, averaged, normalised again."""
    device = next(clip.parameters()).device
    prompts = [template(query) for query in queries for template in templates]
    chunks = []
    progress = tqdm(
        total=len(prompts), desc="text", unit="prompt", disable=len(prompts) <= PROMPTS_PER_BATCH, leave=False
    )
    with torch.no_grad():
        for start in range(0, len(prompts), PROMPTS_PER_BATCH):
            tokens = tokenizer(prompts[start : start + PROMPTS_PER_BATCH]).to(device)
            with _cut_to_prompts(clip, tokens) as cut:
                chunks.append(F.normalize(clip.encode_text(cut).float(), dim=-1))
            progress.update(len(tokens))
    progress.close()
    embeddings = torch.cat(chunks).reshape(len(queries), len(templates), -1).mean(1)
    return F.normalize(embeddings, dim=-1)


class QueryCache:
    """Query embeddings kept in memory and, given a weights key, on disk.

    One file per (model, weights, templates) holds {query: {"embedding", "digest"}}; adding a class
    only embeds the new names. Each entry's digest covers its query, the model and weights, the
    templates and the embedding itself, and is checked on loading: a damaged or tampered file
    (entries swapped, unreadable) is named in a warning, discarded, and its queries embedded again.
    """

    def __init__(
        self, weights_key: str | None, templates: Sequence[Template] = TEMPLATES, directory: Path | None = None
    ):
        self.templates = tuple(templates)
        template_text = "\n".join(template("{}") for template in self.templates)
        self.identity = f"{weights_key}\n{template_text}"
        self.path = None
        if weights_key is not None:
            digest = hashlib.sha256(self.identity.encode()).hexdigest()[:20]
            self.path = Path(directory or default_cache_dir()) / "text" / f"{digest}.pt"
        self.memory: dict[str, Tensor] = {}
        if self.path is not None and self.path.is_file():
            self.memory.update(self._load(self.path))

    def _digest(self, query: str, embedding: Tensor) -> str:
        text = hashlib.sha256(f"{self.identity}\n{query}".encode()).digest()
        return hashlib.sha256(text + embedding.contiguous().numpy().tobytes()).hexdigest()

    def _load(self, path: Path) -> dict[str, Tensor]:
        """The checked entries of the cache file; none (with a warning naming the file) when it is damaged."""
        try:
            entries = torch.load(path, map_location="cpu", weights_only=True)
            loaded = {}
            for query, entry in entries.items():
                embedding = entry["embedding"]
                if not isinstance(embedding, Tensor) or entry["digest"] != self._digest(query, embedding):
                    raise ValueError(f"the entry of {query!r} does not match its digest")
                loaded[query] = embedding
        except Exception as error:  # any damage: unreadable, another layout, entries swapped or edited
            reason = (str(error).strip().splitlines() or [""])[0][:160]
            warnings.warn(
                f"text cache {str(path)!r} is damaged ({type(error).__name__}: {reason}); discarded, its class "
                "names are embedded again",
                stacklevel=3,
            )
            return {}
        return loaded

    def embed(self, clip: torch.nn.Module, tokenizer: Callable, queries: Sequence[str]) -> Tensor:
        """(Q, D) embeddings of `queries`, embedding (and caching) only those not cached yet."""
        missing = list(dict.fromkeys(q for q in queries if q not in self.memory))
        if missing:
            self.memory.update(zip(missing, encode_queries(clip, tokenizer, missing, self.templates).cpu()))
            if self.path is not None:
                entries = {q: {"embedding": e, "digest": self._digest(q, e)} for q, e in self.memory.items()}
                save_torch(entries, self.path)
        return torch.stack([self.memory[q] for q in queries])


def default_cache_dir() -> Path:
    """NACLIP_CACHE, else $XDG_CACHE_HOME/naclip, else ~/.cache/naclip."""
    if os.environ.get("NACLIP_CACHE"):
        return Path(os.environ["NACLIP_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "naclip"
