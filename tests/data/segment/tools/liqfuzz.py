"""Random Liquid filter chains: cdpd's @liquid against Segment's engine (see README.md)."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

from cdpd.mapping import liquid
from cdpd.mapping.errors import MappingError

R = random.Random(int(sys.argv[1]))
FILTERS = {
    "upcase": [],
    "downcase": [],
    "capitalize": [],
    "strip": [],
    "lstrip": [],
    "rstrip": [],
    "size": [],
    "escape": [],
    "escape_once": [],
    "strip_html": [],
    "strip_newlines": [],
    "url_encode": [],
    "url_decode": [],
    "append": ["s"],
    "prepend": ["s"],
    "remove": ["s"],
    "remove_first": ["s"],
    "remove_last": ["s"],
    "replace": ["s", "s"],
    "replace_first": ["s", "s"],
    "replace_last": ["s", "s"],
    "split": ["s"],
    "truncate": ["n", "s?"],
    "truncatewords": ["n", "s?"],
    "slice": ["n", "n?"],
    "join": ["s?"],
    "first": [],
    "last": [],
    "plus": ["n"],
    "minus": ["n"],
    "times": ["n"],
    "divided_by": ["n"],
    "modulo": ["n"],
    "abs": [],
    "ceil": [],
    "floor": [],
    "round": ["n?"],
    "at_least": ["n"],
    "at_most": ["n"],
    "default": ["s"],
    "compact": [],
    "sum": [],
    "where": ["s", "s?"],
    "json": [],
    "slugify": [],
    "to_integer": [],
    "number_of_words": [],
    "normalize_whitespace": [],
    "base64_encode": [],
    "base64_decode": [],
    "xml_escape": [],
    "cgi_escape": [],
    "uri_escape": [],
    "push": ["s"],
    "pop": [],
    "shift": [],
    "unshift": ["s"],
}
PATHS = [
    "p.s",
    "p.n",
    "p.f",
    "p.l",
    "p.o",
    "p.b",
    "p.z",
    "p.e",
    "p.m",
    "p.ls",
    "p.u",
    "'lit eral'",
    "3",
    "-2.5",
    "p.l[1]",
    "p.o.k",
]


def arg(kind, name):
    if kind.startswith("s"):
        choices = ["'a'", "' '", "'-'", "','", "''", "'x y'", "p.s"] + (
            [] if name == "where" else ["3"]
        )
        return R.choice(choices)
    return R.choice(
        ["0", "1", "2", "-1", "3.5", "p.n", "10"] + ([] if name == "slice" else ["'2'"])
    )


def template():
    parts = [R.choice(PATHS)]
    for _ in range(R.randint(1, 3)):
        f = R.choice(list(FILTERS))
        args = [arg(k, f) for k in FILTERS[f] if not k.endswith("?") or R.random() < 0.5]
        parts.append(f + (": " + ", ".join(args) if args else ""))
    return "{{ " + " | ".join(parts) + " }}"


payload = {
    "p": {
        "s": "Hello, World  x",
        "n": 7,
        "f": 2.5,
        "l": ["b", "a", None, 3],
        "o": {"k": "v"},
        "b": True,
        "z": 0,
        "e": "",
        "m": "a<b>&c\n d",
        "ls": ["x y", "z"],
        "u": "caf%C3%A9+x",
    }
}
templates = [template() for _ in range(int(sys.argv[2]))]
env = {**os.environ, "TZ": "UTC"}
liq = str(Path(__file__).parent / "liq.js")
out = json.loads(
    subprocess.run(
        ["node", liq],
        input=json.dumps({"templates": templates, "payload": payload}),
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout
)
if len(sys.argv) > 3:
    json.dump({"payload": payload, "results": out}, open(sys.argv[3], "w"))
bad = 0
from collections import Counter

byfilter = Counter()
for r in out:
    try:
        mine = {"output": liquid.render(r["template"], payload)}
    except MappingError as e:
        mine = {"error": str(e)}
    theirs = {k: v for k, v in r.items() if k != "template"}
    if not (mine == theirs or ("error" in mine and "error" in theirs)):
        bad += 1
        byfilter.update(
            set(x.split(":")[0].strip() for x in r["template"].strip("{} ").split("|")[1:])
        )
        if bad <= 20:
            print(r["template"], "| seg:", theirs, "| ours:", mine)
print("differ", bad, "of", len(out))
print(byfilter.most_common(15))
