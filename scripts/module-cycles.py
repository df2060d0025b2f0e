#!/usr/bin/env python3
"""Import cycles between the top-level modules of a Rust crate's `src/`.

Usage: scripts/module-cycles.py [src] [--edges]

Reads every `.rs` file under `src/` (test code excluded: files named `tests.rs` and everything
after a `#[cfg(test)]` line), collects the top-level module each `crate::` path names, and
prints the strongly connected components with more than one module, with the edges that make
them. Exit status 1 when a cycle exists. `--edges` prints the whole graph.
"""
import os
import re
import sys

def top_module(src, path):
    rel = os.path.relpath(path, src)
    first = rel.split(os.sep)[0]
    return first[:-3] if first.endswith(".rs") else first

def uses(text):
    """Top-level module names a file's non-test code refers to through `crate::`."""
    cut = text.find("#[cfg(test)]")
    if cut >= 0:
        text = text[:cut]
    text = re.sub(r"//[^\n]*", "", text)
    names = set()
    # `use crate::{a::x, b}`: the names directly inside the first brace level.
    for group in re.finditer(r"crate::\{", text):
        depth, i, start, items = 1, group.end(), group.end(), []
        while i < len(text) and depth:
            c = text[i]
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
            if depth == 1 and c == ",":
                items.append(text[start:i]); start = i + 1
            if depth == 0:
                items.append(text[start:i])
            i += 1
        for item in items:
            m = re.match(r"\s*([a-z_][a-z0-9_]*)", item)
            if m:
                names.add(m.group(1))
    for m in re.finditer(r"crate::([a-z_][a-z0-9_]*)", text):
        names.add(m.group(1))
    return names

def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    src = args[0] if args else "src"
    edges = {}
    for root, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs") or f == "tests.rs":
                continue
            path = os.path.join(root, f)
            me = top_module(src, path)
            if me in ("lib", "main"):
                continue
            with open(path, encoding="utf-8") as fh:
                for other in uses(fh.read()):
                    if other != me and other not in ("Error", "Result"):
                        edges.setdefault(me, {}).setdefault(other, []).append(os.path.relpath(path, src))
    nodes = sorted(set(edges) | {o for e in edges.values() for o in e})
    if "--edges" in sys.argv:
        for a in nodes:
            print(f"{a} -> {', '.join(sorted(edges.get(a, {})))}")
    # Tarjan's strongly connected components.
    index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]
    def visit(v):
        index[v] = low[v] = counter[0]; counter[0] += 1
        stack.append(v); on.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v:
                    break
            comps.append(sorted(comp))
    sys.setrecursionlimit(10000)
    for v in nodes:
        if v not in index:
            visit(v)
    cycles = [c for c in comps if len(c) > 1]
    for comp in cycles:
        print(f"cycle of {len(comp)} modules: {' '.join(comp)}")
        for a in comp:
            for b, files in sorted(edges.get(a, {}).items()):
                if b in comp:
                    print(f"  {a} -> {b}  ({', '.join(sorted(set(files)))})")
    if not cycles:
        print("no import cycle between top-level modules")
    return 1 if cycles else 0

if __name__ == "__main__":
    sys.exit(main())
