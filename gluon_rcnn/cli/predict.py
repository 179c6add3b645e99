"""The ``scripts/predict.py`` command line: a catalogue CSV and one PNG per FITS file or image
(see ``gluon_rcnn.engine.predict``)."""
from __future__ import annotations

import argparse
import sys

from ..engine.predict import collect_inputs, predict_files

__all__ = ["main"]


def main(argv=None) -> int:
    from .weights import WEIGHTS_HELP, add_weights_args, resolve_weights
    p = argparse.ArgumentParser(prog="predict.py", description=__doc__, epilog=WEIGHTS_HELP,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="zoo entry (e.g. faster_rcnn_fpn_resnet50_v1b_rgz)")
    add_weights_args(p)
    p.add_argument("--input", nargs="+", required=True, help="FITS/image files, folders or glob patterns")
    p.add_argument("--output", required=True, help="folder for catalogue.csv and the PNGs")
    p.add_argument("--render", default="D1", choices=["D1", "D3", "D4"], help="how FITS inputs are rendered")
    p.add_argument("--ir-dir", help="infrared FITS folder (D3/D4)")
    p.add_argument("--score-thresh", type=float, default=None,
                   help="lowest score written to the CSV and drawn (default: the model config's "
                        "TEST.RESULT_SCORE_THRESH_VIS, 0.5 unless the checkpoint or --config says otherwise)")
    p.add_argument("--device", default=None)
    p.add_argument("--skip-bad-images", action="store_true",
                   help="leave out files that cannot be decoded (each is reported, and the count at the end) "
                        "instead of stopping with an error naming the file")
    p.add_argument("--config", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    a = p.parse_args(argv)
    weights = resolve_weights(p, a, a.model)
    import torch

    from .. import get_model
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        files = collect_inputs(a.input)
        model = get_model(a.model, pretrained=weights, overrides=a.config, device=device)
        skipped: list[str] = []
        path = predict_files(model, files, a.output, a.score_thresh, a.render, a.ir_dir, device,
                             skip_bad_images=a.skip_bad_images, skipped=skipped)
    except (FileNotFoundError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path} and {len(files) - len(skipped)} PNG(s) to {a.output}")
    if skipped:
        print(f"skipped {len(skipped)} bad input file(s):")
        for msg in skipped:
            print(f"  {msg}")
    return 0
