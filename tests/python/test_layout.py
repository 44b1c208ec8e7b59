"""The source tree keeps the layout the README promises: no Rust module imports a module that
imports it (directly or through others), and only src/docker/engine/ names bollard.

Imports are read from `crate::` and `super::` paths outside `#[cfg(test)]` blocks; a path is
charged to the longest module prefix that is a file, so `crate::docker::engine::EngineError` is a
dependency on src/docker/engine/mod.rs, not on src/docker/mod.rs.
"""

import os
import re
import unittest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "src")
# The binaries' own modules sit on top of the library and are not part of its layering.
OUTSIDE_THE_LIBRARY = ("bin", "cli", "bench", "main.rs")


def module_path(relative):
    parts = relative[:-3].split("/")
    if parts[-1] in ("mod", "lib"):
        parts = parts[:-1]
    return tuple(parts)


def read_sources():
    sources = {}
    for folder, _, names in os.walk(ROOT):
        for name in names:
            if name.endswith(".rs"):
                path = os.path.join(folder, name)
                relative = os.path.relpath(path, ROOT).replace(os.sep, "/")
                with open(path, encoding="utf-8") as handle:
                    sources[relative] = handle.read()
    return sources


def dependencies(sources):
    library = {rel: text for rel, text in sources.items() if not rel.startswith(OUTSIDE_THE_LIBRARY)}
    by_module = {module_path(rel): rel for rel in library}
    edges = {}
    for relative, text in library.items():
        me = module_path(relative)
        parent = me[:-1]
        code = text.split("#[cfg(test)]")[0]
        found = set()
        for kind, rest in re.findall(r"\b(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)+)", code):
            names = rest.split("::")[1:]
            if kind == "crate":
                target = names
            else:
                base = list(parent)
                while names and names[0] == "super":
                    base, names = base[:-1], names[1:]
                target = base + names
            for end in range(len(target), 0, -1):
                hit = by_module.get(tuple(target[:end]))
                if hit:
                    if hit != relative:
                        found.add(hit)
                    break
        edges[relative] = found
    return edges


def find_cycle(edges):
    state = {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt, stack)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(edges):
        if node not in state:
            cycle = visit(node, [])
            if cycle:
                return cycle
    return None


class Layout(unittest.TestCase):
    def test_no_module_imports_a_module_that_imports_it(self):
        cycle = find_cycle(dependencies(read_sources()))
        self.assertIsNone(cycle, "import cycle: " + " -> ".join(cycle or []))

    def test_only_the_engine_module_names_bollard(self):
        outside = sorted(rel for rel, text in read_sources().items() if "bollard" in text and not rel.startswith("docker/engine/"))
        self.assertEqual(outside, [], "bollard is named outside src/docker/engine/")

    def test_the_cycle_finder_finds_a_cycle(self):
        self.assertEqual(find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}), ["a", "b", "c", "a"])
        self.assertIsNone(find_cycle({"a": {"b"}, "b": set()}))


if __name__ == "__main__":
    unittest.main()
