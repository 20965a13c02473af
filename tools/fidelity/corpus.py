"""Evaluation text: English license texts that Debian ships in /usr/share/common-licenses
(package base-files, present on every Debian system). Nobody in this project wrote them.
One version per license family is used, so that no sequence is a near copy of another."""
from __future__ import annotations

import os

LICENSE_DIR = "/usr/share/common-licenses"
# Files in a fixed order; aliases (GPL -> GPL-3, ...) and near-duplicate older versions
# (GFDL-1.2, LGPL-2) are left out.
FILES = ["GPL-3", "GPL-2", "LGPL-2.1", "GFDL-1.3", "MPL-1.1", "MPL-2.0", "GPL-1",
         "Apache-2.0", "LGPL-3", "CC0-1.0", "Artistic", "BSD"]


def documents() -> list[tuple[str, str]]:
    docs = []
    for name in FILES:
        p = os.path.join(LICENSE_DIR, name)
        if os.path.isfile(p):
            with open(p, encoding="utf-8", errors="replace") as f:
                docs.append((p, f.read()))
    if not docs:
        raise RuntimeError(f"no license texts under {LICENSE_DIR}")
    return docs


def sequences(encode, seq_len: int, count: int):
    """Up to `count` non-overlapping windows of seq_len tokens, each inside one document,
    taken round-robin over the documents (so they spread over all the licenses).
    Returns (list of (source, start_token, ids), total tokens available)."""
    per_doc = []
    total = 0
    for path, text in documents():
        ids = encode(text)
        total += len(ids)
        wins = [(path, s, ids[s:s + seq_len]) for s in range(0, len(ids) - seq_len + 1, seq_len)]
        if wins:
            per_doc.append(wins)
    out = []
    i = 0
    while len(out) < count and any(per_doc):
        for wins in per_doc:
            if i < len(wins) and len(out) < count:
                out.append(wins[i])
        i += 1
        if all(i >= len(w) for w in per_doc):
            break
    return out, total
