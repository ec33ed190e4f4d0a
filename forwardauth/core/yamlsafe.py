"""YAML in, with the size of what it expands to bounded before anything reads it.

An alias is a reference: `yaml.safe_load` shares the aliased value instead
of copying it, so nine nested levels of ten aliases each are a 0.5 KB file
whose value *reads* as 10^9 elements. Every walk over it (validation, an
error message's repr) then takes minutes and gigabytes: `forwardauth check`
took 7.8 s and 1.1 GB on one, and a SIGHUP with it blocked decisions for
7.4 s. An alias that refers to a node containing itself makes a value that
holds itself, which recursive walks never finish.

So the document is composed into nodes first (aliases are still shared
there), and its expanded size is counted over the node graph, each shared
node once: linear in the file. A document whose expansion exceeds
`max_expansion(text)` (far above any configuration written out by hand,
however large, aliases included), that nests deeper than MAX_DEPTH, or
whose aliases refer to a node containing them, is refused with a
`YamlRefused` before a Python value is built.
"""

from __future__ import annotations

from typing import Any

import yaml

try:  # libyaml: fast, and it refuses flow nesting deeper than 1000 itself
    _Loader: type = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - PyYAML without libyaml
    _Loader = yaml.SafeLoader

MAX_DEPTH = 64  # a configuration nests about six levels deep
BASE_EXPANSION = 1_000_000  # nodes + scalar characters allowed beyond the text's own size


class YamlRefused(ValueError):
    """The document expands too far, nests too deep, holds itself, or is not text (a lone
    surrogate: only from a caller's own str, never from a file read as UTF-8). The message is
    safe to show."""


def max_expansion(text: str) -> int:
    """What a text may expand to: four times its length (a document without
    aliases expands to at most about 1.5 times), plus a fixed allowance for aliases."""
    return BASE_EXPANSION + 4 * len(text)


def load(text: str) -> Any:
    """Like `yaml.safe_load`, but refusing documents that expand too far or nest too deep.

    Raises yaml.YAMLError for invalid YAML and YamlRefused for the limits."""
    try:
        loader = _Loader(text)
    except UnicodeEncodeError:  # libyaml encodes the str to UTF-8 first (found by bench/fuzz.py)
        raise YamlRefused("not valid Unicode text") from None
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:  # the pure-Python composer recurses per level
            raise YamlRefused(f"nested more than {MAX_DEPTH} levels deep") from None
        if node is None:
            return None
        check(node, max_expansion(text))
        return loader.construct_document(node)
    finally:
        loader.dispose()


def check(root: yaml.Node, limit: int) -> int:
    """The expanded size of `root` (nodes plus scalar characters, a shared node
    counted at every place it is used), or YamlRefused. Iterative: its own
    cost is linear in the number of distinct nodes, whatever the depth."""
    size: dict[int, int] = {}  # id(node) -> expanded size, once finished
    open_: set[int] = set()  # nodes whose children are being counted (a cycle reaches one of these)
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, done = stack.pop()
        key = id(node)
        if done:
            open_.discard(key)
            total = 1 + sum(size[id(c)] for c in _children(node))
            if total > limit:
                raise YamlRefused(f"aliases expand to more than {limit:,} nodes and characters "
                                     f"(write the values out, or use fewer nested aliases)")
            size[key] = total
            continue
        if key in size:
            continue
        if key in open_:
            raise YamlRefused("an alias refers to a node that contains it")
        if depth > MAX_DEPTH:
            raise YamlRefused(f"nested more than {MAX_DEPTH} levels deep")
        if isinstance(node, yaml.ScalarNode):
            size[key] = 1 + len(node.value)
            if size[key] > limit:
                raise YamlRefused(f"a value is longer than {limit:,} characters")
            continue
        open_.add(key)
        stack.append((node, depth, True))
        for child in _children(node):
            ck = id(child)
            if ck in open_:
                raise YamlRefused("an alias refers to a node that contains it")
            if ck not in size:
                stack.append((child, depth + 1, False))
    return size[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []
