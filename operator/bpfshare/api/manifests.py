"""Manifest files (YAML or JSON) read document by document, as kubectl reads them, never raising.

Each document becomes a :class:`Document`: its file, its number in the file, the line it starts on,
and either its body (what kubectl would send: JSON values, keys as strings, an integral float an
integer) or why it could not be read. A bad document, even invalid YAML, spoils only itself: the
file is split at ``---`` lines first, as kubectl's YAMLReader does. The items of a ``List`` are
documents of their own. Every field's line is kept, so that an error can point into the file.

Stricter than kubectl where kubectl silently loses data: a key given twice in one mapping is an
error (kubectl keeps the last), as the API server's strict decoding refuses a duplicate field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from bpfshare.api.schema import as_json, child, item, show

SUFFIXES = (".yaml", ".yml", ".json")
# What one document may expand to (aliases can make a small file huge): values, in all.
MAX_VALUES = 1_000_000
_SEPARATOR = re.compile(r"---(\s|$)")


@dataclass
class Document:
    source: Path
    index: int  # 1-based, among the file's documents (empty ones are not counted)
    line: int  # 1-based, where the document (or the List item) starts
    item: int | None = None  # the index in a List's items
    body: Any = None
    error: str | None = None  # why it could not be read; then body is None
    lines: Mapping[str, int] = field(default_factory=dict)  # field path -> line

    @property
    def where(self) -> str:
        """``objects.yaml: document 2`` (``, items[0]`` for a List's item)."""
        text = f"{self.source}: document {self.index}"
        return text if self.item is None else f"{text}, items[{self.item}]"

    def line_of(self, path: str) -> int:
        """The line of a field, or of the nearest enclosing field that is in the file."""
        while path:
            if path in self.lines:
                return self.lines[path]
            path = re.sub(r"(\.[^.\[]*|\[[^\]]*\])$", "", path) if re.search(r"[.\[]", path) else ""
        return self.line


class _Invalid(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


class _Loader(yaml.SafeLoader):
    """YAML 1.1 as PyYAML reads it, but a date stays a string, as kubectl's YAML reading keeps it."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _key(value: Any) -> str | None:
    """A mapping key as kubectl's YAML-to-JSON conversion writes it (``1`` is ``"1"``)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return str(value)
    return None


class _Converter:
    """A composed YAML node to JSON values, recording each field's line."""

    def __init__(self, loader: _Loader, offset: int) -> None:
        self.loader = loader
        self.offset = offset
        self.lines: dict[str, int] = {}
        self.values = 0
        self.active: set[int] = set()  # the nodes being converted (an alias to one of them recurses)

    def line(self, node: Node) -> int:
        return int(node.start_mark.line) + 1 + self.offset

    def value(self, node: Node, path: str) -> Any:
        self.values += 1
        if self.values > MAX_VALUES:
            raise _Invalid(self.line(node), f"the document holds more than {MAX_VALUES} values (aliases?)")
        self.lines.setdefault(path, self.line(node))
        if id(node) in self.active:
            raise _Invalid(self.line(node), f"{path or 'the document'}: an alias refers to itself")
        self.active.add(id(node))
        try:
            if isinstance(node, MappingNode):
                return self.mapping(node, path)
            if isinstance(node, SequenceNode):
                return [self.value(sub, item(path, i)) for i, sub in enumerate(node.value)]
            if isinstance(node, ScalarNode):
                return self.scalar(node, path)
            raise _Invalid(self.line(node), f"{path or 'the document'}: not a YAML value")
        finally:
            self.active.discard(id(node))

    def scalar(self, node: ScalarNode, path: str) -> Any:
        try:
            value = self.loader.construct_object(node)
        except yaml.constructor.ConstructorError as exc:
            raise _Invalid(self.line(node), f"{path or 'the document'}: {exc.problem}") from None
        if isinstance(value, float):
            if value != value or value in (float("inf"), float("-inf")):
                raise _Invalid(self.line(node), f"{path}: {value!r} is not a number JSON can carry")
            return int(value) if value.is_integer() and abs(value) < 2**53 else value
        if value is None or isinstance(value, str | int | bool):
            return value
        raise _Invalid(self.line(node), f"{path or 'the document'}: {type(value).__name__} is not a JSON value")

    def mapping(self, node: MappingNode, path: str) -> dict[str, Any]:
        try:
            self.loader.flatten_mapping(node)  # merge keys (<<)
        except yaml.constructor.ConstructorError as exc:
            raise _Invalid(self.line(node), f"{path or 'the document'}: {exc.problem}") from None
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                raise _Invalid(
                    self.line(key_node), f"{path or 'the document'}: a key must be a string, not a collection"
                )
            key = _key(self.scalar(key_node, path))
            if key is None:
                raise _Invalid(self.line(key_node), f"{path or 'the document'}: a key must be a string")
            if key in out:
                raise _Invalid(self.line(key_node), f"{child(path, key)}: duplicate field")
            self.lines.setdefault(child(path, key), self.line(key_node))  # a field is on its key's line
            out[key] = self.value(value_node, child(path, key))
        return out


def _chunks(text: str) -> Iterator[tuple[int, str]]:
    """(line offset, text) of each part between ``---`` lines, as kubectl's YAMLReader splits."""
    start, lines = 0, text.splitlines(keepends=True)
    for number, line in enumerate(lines):
        if _SEPARATOR.match(line) and number > start:
            yield start, "".join(lines[start:number])
            start = number
    yield start, "".join(lines[start:])


def _documents_in(text: str, source: Path) -> Iterator[Document]:
    index = 0
    for offset, chunk in _chunks(text):
        loader = _Loader(chunk)
        try:
            while loader.check_node():
                node = loader.get_node()
                if node is None:
                    continue
                converter = _Converter(loader, offset)
                line = converter.line(node)
                try:
                    body = converter.value(node, "")
                except _Invalid as exc:
                    index += 1
                    yield Document(source, index, exc.line, error=str(exc))
                    continue
                if body is None:
                    continue  # an empty document, as kubectl skips it
                index += 1
                yield Document(source, index, line, body=body, lines=converter.lines)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = (mark.line + 1 + offset) if mark else offset + 1
            column = f" (column {mark.column + 1})" if mark else ""
            context = exc.context or ""
            if context and exc.context_mark and exc.context_mark.line + 1 + offset != line:
                context += f" (line {exc.context_mark.line + 1 + offset})"
            index += 1
            problem = ", ".join(p for p in (context, exc.problem) if p)
            yield Document(source, index, line, error=f"invalid YAML: {problem}{column}")
        except yaml.YAMLError as exc:
            index += 1
            yield Document(source, index, offset + 1, error=f"invalid YAML: {exc}")
        finally:
            loader.dispose()


def _expand(doc: Document, list_kinds: Iterable[str]) -> Iterator[Document]:
    """A List's items, each a document; any other document as it is."""
    body = doc.body
    if not (isinstance(body, dict) and body.get("kind") in ("List", *list_kinds) and "items" in body):
        yield doc
        return
    items = body["items"]
    if not isinstance(items, list):
        yield Document(doc.source, doc.index, doc.line_of("items"), error=f"items: must be a list, not {show(items)}")
        return
    for i, entry in enumerate(items):
        prefix = item("items", i)
        lines = {
            k.removeprefix(prefix).removeprefix("."): v
            for k, v in doc.lines.items()
            if k == prefix or k.startswith((f"{prefix}.", f"{prefix}["))
        }
        yield Document(doc.source, doc.index, doc.line_of(prefix), item=i, body=entry, lines=lines)


def files(sources: Iterable[Path]) -> Iterator[Path]:
    """Each source, or the YAML and JSON files under a directory (recursively, in name order)."""
    for source in sources:
        if source.is_dir():
            yield from sorted(p for p in source.rglob("*") if p.suffix in SUFFIXES and not p.is_dir())
        else:
            yield source


def read(sources: Iterable[Path], list_kinds: Iterable[str] = ()) -> Iterator[Document]:
    """Every document of every file, in order; an unreadable file is one document with its error."""
    list_kinds = tuple(list_kinds)
    for path in files(sources):
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            yield Document(path, 1, 1, error=f"cannot read: {exc}")
            continue
        docs = list(_documents_in(text, path))
        if any(d.error for d in docs) and text.lstrip().startswith("{"):
            # JSON that YAML 1.1 cannot read (tabs, say): JSON's reading, unless YAML's found more
            # than a syntax error (a duplicate field, with its path) and JSON's did not read it all
            as_json_docs = _json_documents(text, path)
            unreadable = all((d.error or "invalid YAML").startswith("invalid YAML") for d in docs)
            if as_json_docs and (unreadable or not any(d.error for d in as_json_docs)):
                docs = as_json_docs
        for doc in docs:
            yield from _expand(doc, list_kinds)


def _json_documents(text: str, source: Path) -> list[Document]:
    """A stream of JSON objects, as kubectl's JSON decoder reads one (no field lines here)."""

    def pairs(entries: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in entries:
            if key in out:
                raise ValueError(f"{key}: duplicate field")
            out[key] = value
        return out

    decoder = json.JSONDecoder(object_pairs_hook=pairs)
    docs: list[Document] = []
    position = 0
    while position < len(text):
        while position < len(text) and text[position].isspace():
            position += 1
        if position >= len(text):
            break
        line = text.count("\n", 0, position) + 1
        try:
            body, position = decoder.raw_decode(text, position)
            docs.append(Document(source, len(docs) + 1, line, body=as_json(body)))
        except ValueError as exc:
            docs.append(Document(source, len(docs) + 1, line, error=f"invalid JSON: {exc}"))
            break
    return docs
