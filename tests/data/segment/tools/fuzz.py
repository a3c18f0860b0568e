"""Regenerates test data under tests/data/segment/ from Segment's sources: see README.md."""

import os
from pathlib import Path

WORK = os.environ.get("WORK", "/tmp/segment-work")
DATA = str(Path(__file__).resolve().parent.parent)
import json
import random
import subprocess
import sys

from cdpd.mapping import kit

R = random.Random(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
KEYS = ["a", "b", "c", "d", "e", "0", "a b"]


def value(depth=0):
    c = R.random()
    if depth < 2 and c < 0.2:
        return {R.choice(KEYS): value(depth + 1) for _ in range(R.randint(0, 3))}
    if depth < 2 and c < 0.3:
        return [value(depth + 1) for _ in range(R.randint(0, 3))]
    return R.choice(
        [
            None,
            True,
            False,
            0,
            1,
            -2,
            1.5,
            2.0,
            "",
            "x",
            "a-b",
            "A-b-C",
            "1",
            "true",
            '{"k":1}',
            "[1,2]",
            "hello world",
            "$.a",
            "a.b",
            "-",
            "0",
        ]
    )


def path():
    return R.choice(
        [
            "$.a",
            "$.b",
            "$.a.b",
            "a",
            "$.a[0]",
            "$.c.d",
            "$.",
            "",
            "$.e",
            "$.a.length",
            "$.a b",
            "b.0",
            "$.missing",
            "$.a['b']",
        ]
    )


def mapping(depth=0):
    c = R.random()
    if depth > 2 or c < 0.25:
        return R.choice([{"@path": path()}, value(2), {"@path": path()}])
    d = R.choice(
        [
            "@path",
            "@template",
            "@literal",
            "@if",
            "@case",
            "@replace",
            "@arrayPath",
            "@json",
            "@merge",
            "@flatten",
            "@excludeWhenNull",
            "@transform",
            "obj",
            "list",
        ]
    )
    m = lambda: mapping(depth + 1)
    if d == "@path":
        return {"@path": R.choice([path(), path(), {"@template": R.choice(["{{b}}", "$.a"])}])}
    if d == "@template":
        return {
            "@template": R.choice(
                ["{{a}}-{{b}}", "{{{a}}}", "x{{a.b}}y", "{{ c }}", "{{a}}}", "{{e}}", "plain"]
            )
        }
    if d == "@literal":
        return {"@literal": m()}
    if d == "@if":
        o = {R.choice(["exists", "blank"]): m()}
        if R.random() < 0.8:
            o["then"] = m()
        if R.random() < 0.7:
            o["else"] = m()
        return {"@if": o}
    if d == "@case":
        return {
            "@case": {"operator": R.choice(["lower", "upper"]), "value": R.choice([m(), "MiX"])}
        }
    if d == "@replace":
        o = {
            "pattern": R.choice(["-", "a", "A", "1", "true", ".", "$", "b c"]),
            "value": R.choice([m(), {"@path": path()}]),
        }
        if R.random() < 0.7:
            o["replacement"] = R.choice(["_", "", "$&$&", "$$", "Z"])
        if R.random() < 0.3:
            o["global"] = R.choice([True, False])
        if R.random() < 0.3:
            o["ignorecase"] = R.choice([True, False])
        if R.random() < 0.3:
            o["pattern2"] = R.choice(["x", "_", ""])
            o["replacement2"] = R.choice(["y", ""])
        return {"@replace": o}
    if d == "@arrayPath":
        src = R.choice([path(), {"@path": path()}])
        return {
            "@arrayPath": R.choice(
                [[src], [src, {"k": {"@path": R.choice(["$.a", "$.b", "$.", "a"])}}], [src, {}]]
            )
        }
    if d == "@json":
        return {
            "@json": {
                "mode": R.choice(["encode", "decode"]),
                "value": R.choice([{"@path": path()}, m()]),
            }
        }
    if d == "@merge":
        return {
            "@merge": {
                "direction": R.choice(["left", "right"]),
                "objects": [
                    R.choice([m(), {"x": 1}, {"@path": path()}]) for _ in range(R.randint(0, 3))
                ],
            }
        }
    if d == "@flatten":
        o = {"value": R.choice([{"@path": path()}, m()]), "separator": R.choice([".", "_", "/"])}
        if R.random() < 0.4:
            o["omitArrays"] = R.choice([True, False])
        return {"@flatten": o}
    if d == "@excludeWhenNull":
        return {"@excludeWhenNull": m()}
    if d == "@transform":
        return {
            "@transform": {
                "apply": {"a": m(), "b": m()},
                "mapping": R.choice([{"r": m()}, {"@path": "$."}]),
            }
        }
    if d == "obj":
        return {R.choice(KEYS): m() for _ in range(R.randint(1, 3))}
    return [m() for _ in range(R.randint(0, 3))]


cases = []
for _ in range(int(sys.argv[2]) if len(sys.argv) > 2 else 2000):
    payload = {k: value() for k in R.sample(KEYS, R.randint(0, 5))}
    cases.append([{"f": mapping()}, payload])
seg = json.loads(
    subprocess.run(
        ["node", str(Path(__file__).parent / "mk.js")],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
)
if len(sys.argv) > 3:
    keep = [{"mapping": mp, "payload": p, **r} for (mp, p), r in zip(cases, seg)]
    json.dump(keep, open(sys.argv[3], "w"))
bad = 0
for (mp, payload), s in zip(cases, seg):
    try:
        r = kit.transform(mp, payload)
        mine = {"absent": True} if r is kit.ABSENT else {"output": r}
    except kit.MappingError as e:
        mine = {"error": str(e)}
    except Exception as e:
        mine = {"crash": repr(e)}
    same = ("error" in s and "error" in mine) or (
        mine == s and json.dumps(mine, sort_keys=True) == json.dumps(s, sort_keys=True)
    )
    if not same:
        bad += 1
        if bad <= 12:
            print(
                json.dumps(mp),
                json.dumps(payload),
                "\n  seg:",
                json.dumps(s)[:300],
                "\n  ours:",
                json.dumps(mine, default=str)[:300],
            )
print("differ", bad, "of", len(cases))
