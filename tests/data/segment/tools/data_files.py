"""Writes the data files computed by running Segment's code (see README.md): liquid-engine.json
from WORK/liq_in.json and WORK/liq_out.json, mapping-kit-random.json from WORK/gen.json and
destination-subscriptions-random.json from WORK/fqlgen.json, liquid-random.json from
WORK/liqgen.json."""

import json
import os
from pathlib import Path

WORK = Path(os.environ.get("WORK", "/tmp/segment-work"))
DATA = Path(__file__).resolve().parent.parent
SRC = "segmentio/action-destinations@970a17ee8d064501db7ae555f4d90f17befadfc0:"
LIQUID_NOT_APPLICABLE = {
    "{% if properties.missing == blank %}t{% else %}f{% endif %}": (
        "python-liquid does not take an undefined variable as equal to blank; liquidjs does"
    ),
    "{{ properties.none_value == nil }}": (
        "liquidjs takes a comparison inside {{ }}; Liquid (and python-liquid) allow one only in"
        " tags such as if"
    ),
}


def liquid() -> None:
    given = json.loads((WORK / "liq_in.json").read_text())
    cases, not_applicable = [], []
    for result in json.loads((WORK / "liq_out.json").read_text()):
        template = result["template"]
        if template in LIQUID_NOT_APPLICABLE:
            segment = {k: v for k, v in result.items() if k != "template"}
            reason = LIQUID_NOT_APPLICABLE[template]
            not_applicable.append({"template": template, "segment": segment, "reason": reason})
        elif "error" in result:
            cases.append({"template": template, "raises": True, "upstream_error": result["error"]})
        else:
            cases.append({"template": template, "output": result["output"]})
    document = {
        "upstream": SRC + "packages/core/src/mapping-kit/liquid-directive.ts with liquidjs"
        " 10.27.2 (its pinned version), TZ=UTC",
        "comment": "Not upstream test cases: outputs computed by running Segment's own"
        " liquid-directive.ts (its engine settings, disabled tags and filters) on these templates"
        " and this payload. raises: Segment throws (its message in upstream_error).",
        "payload": given["payload"],
        "cases": cases,
        "not_applicable": not_applicable,
    }
    _write("liquid-engine.json", json.dumps(document, indent=1, ensure_ascii=False))


def mapping_kit_random() -> None:
    cases = json.loads((WORK / "gen.json").read_text())
    for case in cases:
        if "error" in case:
            case["raises"] = True
            case["upstream_error"] = case.pop("error").strip().split("\n")[0][:160]
    document = {
        "upstream": SRC + "packages/core/src/mapping-kit/index.ts",
        "comment": "Not upstream test cases: random mappings and payloads, each answered by"
        " running Segment's own transform(mapping, payload). output is the result as"
        " JSON.stringify writes it (key order included), absent: undefined, raises: it throws.",
        "cases": cases,
        "not_applicable": [],
    }
    text = json.dumps(document, ensure_ascii=False).replace(', {"mapping"', ',\n {"mapping"')
    _write("mapping-kit-random.json", text)


def subscriptions_random() -> None:
    document = {
        "upstream": SRC + "packages/destination-subscriptions/src/ (parse-fql.ts, validate.ts,"
        " with @segment/fql-ts 1.10.1)",
        "comment": "Not upstream test cases: random subscriptions and messages, each answered by"
        " running Segment's own validate(parseFql(fql), message). Left out of the generator, as"
        " README explains: contains()/match() inside parentheses and on `type`.",
        "cases": json.loads((WORK / "fqlgen.json").read_text()),
    }
    text = json.dumps(document, ensure_ascii=False).replace(', {"fql"', ',\n {"fql"')
    _write("destination-subscriptions-random.json", text)


def liquid_random() -> None:
    made = json.loads((WORK / "liqgen.json").read_text())
    cases = []
    for result in made["results"]:
        if "error" in result:
            cases.append({"template": result["template"], "raises": True})
        else:
            cases.append({"template": result["template"], "output": result["output"]})
    document = {
        "upstream": SRC + "packages/core/src/mapping-kit/liquid-directive.ts with liquidjs"
        " 10.27.2, TZ=UTC",
        "comment": "Not upstream test cases: random chains of Liquid filters (tools/liqfuzz.py),"
        " each rendered by Segment's own liquid-directive.ts. Left out of the generator: a text"
        " start or length for slice, and a number as where's key (liquidjs's JavaScript"
        " coercions there are not copied).",
        "payload": made["payload"],
        "cases": cases,
        "not_applicable": [],
    }
    text = json.dumps(document, ensure_ascii=False).replace(', {"template"', ',\n {"template"')
    _write("liquid-random.json", text)


def _write(name: str, text: str) -> None:
    (DATA / name).write_text(text + "\n")


if __name__ == "__main__":
    liquid()
    mapping_kit_random()
    subscriptions_random()
    liquid_random()
