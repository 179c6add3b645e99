"""``--weights FILE | --pretrained | --random-weights``: the choice every command that runs a model
must make, shared by ``scripts/predict.py`` and ``scripts/eval.py``. Run as a module, it lists the
zoo entries with published weights and fetches them::

    python -m gluon_rcnn.cli.weights list [--all] [--json]   # entry, where from, the cache path, reproduced?
    python -m gluon_rcnn.cli.weights fetch NAME               # download (and convert) now, e.g. before going offline

Refuse by default: a model built from a zoo entry without weights has random detection heads, and
its output (boxes, scores, a catalogue, an AP table) looks like a result but is noise. A user who
forgot ``--weights`` must be told, not handed that; drawing such detections on purpose (a smoke
test of the pipeline) takes ``--random-weights`` and prints a warning.
"""
from __future__ import annotations

import argparse
import os
import sys
import textwrap

__all__ = ["WEIGHTS_HELP", "add_weights_args", "resolve_weights", "main"]

WEIGHTS_HELP = textwrap.fill(
    "One of --weights FILE, --pretrained or --random-weights is required. Without weights the detection "
    "heads are random: their boxes and scores look like a result but are noise, so a forgotten --weights "
    "is refused (exit 2) rather than silently producing garbage.", width=90)


def add_weights_args(parser) -> None:
    """Add the three mutually exclusive options to ``parser`` (a parser or an argument group)."""
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--weights", metavar="FILE",
                   help="checkpoint to run (e.g. runs/x/model_final.pth); its saved config wins over the entry's")
    g.add_argument("--pretrained", action="store_true",
                   help="the zoo entry's published weights (refused when the entry has none yet)")
    g.add_argument("--random-weights", action="store_true",
                   help="run with random (untrained) detection heads, for smoke tests only: the detections "
                        "are meaningless; a warning is printed")


def resolve_weights(parser: argparse.ArgumentParser, args, model: str):
    """``get_model``'s ``pretrained=`` for the chosen option (a path, True, or None for random),
    after refusing a missing choice or ``--pretrained`` for an entry without published weights
    (``parser.error``: usage message, exit 2)."""
    if args.weights:
        return args.weights
    if args.pretrained:
        from ..model_zoo import get_entry
        try:
            url = (get_entry(model).get("weights") or {}).get("url")
        except KeyError as e:  # an unknown zoo name
            parser.error(str(e))
        if not url:
            parser.error(f"--pretrained: zoo entry {model!r} has no published weights yet; "
                         "pass --weights FILE (a checkpoint you trained)")
        return True
    if args.random_weights:
        if os.environ.get("RANK", "0") != "0":  # under torchrun: once, from rank 0
            return None
        print(f"WARNING: --random-weights: {model} runs with untrained, random detection heads; its detections "
              "are noise, not results", file=sys.stderr, flush=True)
        return None
    parser.error(f"no weights for --model {model}: give --weights FILE (a trained checkpoint), --pretrained "
                 "(the zoo entry's published weights) or --random-weights (meaningless detections, for smoke "
                 "tests); without weights the detections would be random but look like a result")


def main(argv=None) -> int:
    """``list``: the zoo entries with published weights (``--all``: every entry), where they come
    from, the path where the download is cached / a file downloaded by hand is picked up, and whether
    this library's outputs were compared with the publisher's code (``reproduced``).
    ``fetch NAME``: download (and for a tensorpack npz, convert) NAME's weights into the cache. Exit
    status 2 for a name without weights (or unknown), 1 when the download fails."""
    p = argparse.ArgumentParser(prog="python -m gluon_rcnn.cli.weights",
                                description="Published weights of the model zoo entries.")
    sub = p.add_subparsers(dest="cmd", required=True)
    ls = sub.add_parser("list", help="entries with published weights, where from, the cache path")
    ls.add_argument("--all", action="store_true", help="every entry, '-' for those without published weights")
    ls.add_argument("--json", action="store_true", help="one JSON list of {name, weights, file, reproduced}")
    fe = sub.add_parser("fetch", help="download (and convert) an entry's published weights into the cache")
    fe.add_argument("name")
    args = p.parse_args(argv)
    from ..model_zoo import get_model, list_models
    if args.cmd == "list":
        rows = [r for r in list_models(details=True) if args.all or r["weights"]]
        if args.json:
            import json
            print(json.dumps(rows, indent=1))
            return 0
        width = max(len(r["name"]) for r in rows) if rows else 0
        for r in rows:
            print(f"{r['name']:<{width}}  {r['weights'] or '-'}")
            if r["file"]:
                print(f"{'':<{width}}  -> {r['file']}")
            print(f"{'':<{width}}  reproduced: {r['reproduced']}")
        n = sum(1 for r in rows if r["weights"])
        print(f"{n} entr{'y' if n == 1 else 'ies'} with published weights (get_model(NAME, pretrained=True); "
              "a file downloaded by hand is picked up at the path after '->')", file=sys.stderr)
        return 0
    try:
        get_model(args.name, pretrained=True)
    except (KeyError, ValueError) as e:  # ZooError: an unknown name, no published weights, a bad cached file
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # DownloadError: the network or the server (the message names the URL and the path)
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{args.name}: weights cached and loadable")
    return 0


if __name__ == "__main__":
    sys.exit(main())
