"""Regenerates test data under tests/data/segment/ from Segment's sources: see README.md."""

import os
from pathlib import Path

WORK = os.environ.get("WORK", "/tmp/segment-work")
DATA = str(Path(__file__).resolve().parent.parent)
import json
import random
import sqlite3
import subprocess
import sys

import msgspec

from cdpd.mapping import fql

R = random.Random(int(sys.argv[1]))
FIELDS = [
    "type",
    "event",
    "name",
    "userId",
    "properties.a",
    "properties.b.c",
    "traits.a",
    "context.a",
    "properties.x\\ y",
]
VALUES = [
    '"track"',
    '"a"',
    '"A b"',
    '"3"',
    '""',
    '"true"',
    "3",
    "0",
    "-1.5",
    "true",
    "false",
    "null",
]


def cond(depth=0):
    c = R.random() if depth == 0 else 1.0  # Segment misreads a function call inside parentheses
    f = R.choice(FIELDS if c >= 0.4 else FIELDS[1:])  # and ignores one on type
    if c < 0.2:
        return (
            R.choice(["", "!"]) + "contains(" + f + ", " + R.choice(['"a"', '""', '"b"', "3"]) + ")"
        )
    if c < 0.4:
        return (
            R.choice(["", "!"])
            + "match("
            + f
            + ", "
            + R.choice(['"a*"', '"*b"', '"ab"', '"*"', '"a*b"'])
            + ")"
        )
    return f"{f} {R.choice(['=', '!=', '<', '<=', '>', '>='])} {R.choice(VALUES)}"


def expr(depth=0):
    parts = [
        cond(depth) if depth or R.random() < 0.75 else "(" + expr(1) + ")"
        for _ in range(R.randint(1, 3))
    ]
    out = parts[0]
    for p in parts[1:]:
        out += f" {R.choice(['and', 'or'])} {p}"
    return out


VAL = [
    None,
    True,
    False,
    0,
    3,
    3.0,
    -1.5,
    7,
    "",
    "a",
    "ab",
    "b",
    "A b",
    "3",
    "true",
    "track",
    "xa",
    "ba",
    {"c": "a"},
    ["a"],
]


def message():
    m = {}
    for f in FIELDS:
        if R.random() < 0.5:
            continue
        parts = f.replace("\\ ", " ").split(".")
        o = m
        for p in parts[:-1]:
            o = o.setdefault(p, {}) if isinstance(o.get(p, {}), dict) else o
        o[parts[-1]] = R.choice(VAL)
    return m


cases = [[expr(), [message() for _ in range(12)]] for _ in range(int(sys.argv[2]))]
seg = json.loads(
    subprocess.run(
        ["node", str(Path(__file__).parent / "fqlfuzz.js")],
        input=json.dumps({"cases": cases}),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
)
if len(sys.argv) > 3:
    json.dump(
        [
            {"fql": t, "probes": [{"message": m, "matches": a} for m, a in zip(ms, r["answers"])]}
            for (t, ms), r in zip(cases, seg)
        ],
        open(sys.argv[3], "w"),
    )
bad = rejected = agreed = 0
for (text, messages), s in zip(cases, seg):
    try:
        node = fql.parse(text)
    except fql.FqlError:
        rejected += 1
        continue
    if s["error"]:
        print("segment errors, we parse:", text)
        bad += 1
        continue
    sql, params = fql.to_sql(node)
    with sqlite3.connect(":memory:") as conn:
        rows = [
            bool(
                conn.execute(
                    f"SELECT {sql} FROM (SELECT ? AS payload)",
                    [*params, msgspec.json.encode(m).decode()],
                ).fetchone()[0]
            )
            for m in messages
        ]
    py = [fql.matches(node, m) for m in messages]
    for m, a, b, c in zip(messages, py, rows, s["answers"]):
        if a != b or a != c:
            bad += 1
            print(text, json.dumps(m), "py", a, "sql", b, "seg", c)
            break
    else:
        agreed += 1
print("agreed", agreed, "differ", bad, "rejected", rejected)
