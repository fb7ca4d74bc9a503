"""`q7x2-runtime doctor [--pins FILE] [--json] [--record]`."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

from q7x2_runtime.doctor.compare import Finding, compare
from q7x2_runtime.doctor.installed import installed
from q7x2_runtime.doctor.pins import PINS_PATH, Pins, load_pins, save_pins
from q7x2_runtime.errors import UserError

EXIT_MISMATCH = 1


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "doctor", help="print and check the versions that must match (CANN, torch, torch_npu, MindSpeed, ...)",
        description="Compare what this container holds with the pins the image was built with; "
        "one line per component, exit 1 when any is missing or differs.")
    p.add_argument("--pins", type=Path, default=PINS_PATH, metavar="FILE", help=f"pins file (default {PINS_PATH})")
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    p.add_argument("--record", action="store_true",
                   help="image build only: fill the pins left open (e.g. the base image's CANN) from what is installed, "
                   "and record what preprocess checks once per installation (HF's and tiktoken's Unicode classes, "
                   "transformers' import tables)")
    p.set_defaults(func=_run)


def record(pins: Pins) -> Pins:
    """Pins with every open, recordable entry set to what is installed here."""
    filled = []
    for pin in pins.components:
        if pin.record and pin.want is None:
            have = installed(pin)
            if have is None:
                raise UserError(f"{pin.name}: not found while building the image, so nothing can be recorded "
                                "(the base image lacks it?)")
            pin = replace(pin, want=have, record=False)
        filled.append(pin)
    return replace(pins, components=filled)


def record_preprocess() -> None:
    """What preprocess checks or computes once per installation, done at build time so that no
    container's first preprocess pays its CPU-seconds: the fast tokenizer path's Unicode
    verdict, and transformers' lazy-import tables (see preprocess.import_structure)."""
    from q7x2_runtime.preprocess import import_structure, unicode_classes

    try:
        path, reason = unicode_classes.record_installation()
        tables = import_structure.record_installation()
    except OSError as e:
        raise UserError(f"preprocess record: cannot write it ({e}); the image build needs a writable "
                        f"{e.filename or 'share directory'}") from e
    print("preprocess: " + (f"{reason}: preprocess will use the exact HF path" if reason
                            else "HF's and tiktoken's Unicode classes agree") + f"; recorded in {path}")
    print(f"preprocess: transformers' import tables: {len(tables)} recorded"
          + (f" in {tables[0].parent}" if tables else " (this transformers builds none on import)"))


def check(pins: Pins) -> list[Finding]:
    return compare(pins.components, {p.name: installed(p) for p in pins.components})


def _run(args: argparse.Namespace) -> int:
    pins = load_pins(args.pins)
    if args.record:
        pins = record(pins)
        save_pins(pins, args.pins)
        record_preprocess()
    findings = check(pins)
    bad = [f for f in findings if f.verdict != "ok"]
    if args.json:
        print(json.dumps({"flavor": pins.flavor, "ok": not bad, "findings": [asdict(f) for f in findings]}))
    else:
        width = max(len(f.name) for f in findings) if findings else 0
        for f in findings:
            if f.verdict == "ok":
                print(f"  {f.name:<{width}}  {f.have}")
        for f in bad:
            print(f.line(), file=sys.stderr)
        print(f"{pins.flavor} image: " + (f"{len(bad)} of {len(findings)} components differ from the pins"
                                          if bad else f"all {len(findings)} components match the pins"))
    return EXIT_MISMATCH if bad else 0
