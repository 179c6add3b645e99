"""``--optimize {off,fp32,bf16} [--box-head-bf16]``: the inference precision every command that runs
a model offers, shared by ``scripts/eval.py`` and ``scripts/predict.py`` (speed and accuracy of each
mode: docs/benchmarks.md)."""
from __future__ import annotations

__all__ = ["add_optimize_args", "check_optimize_args", "apply_optimize"]


def add_optimize_args(parser) -> None:
    """Add ``--optimize`` and ``--box-head-bf16`` to ``parser`` (a parser or an argument group)."""
    parser.add_argument("--optimize", choices=["off", "fp32", "bf16"], default="off",
                        help="net.optimize_for_inference(precision): fp32 (rounding only) or bf16 (faster on CPUs "
                             "with AVX-512 BF16, box head kept fp32; speed and accuracy in docs/benchmarks.md)")
    parser.add_argument("--box-head-bf16", action="store_true",
                        help="with --optimize bf16: the box head in bf16 too (fp32_box_head=False: faster still, "
                             "1.59x torchvision on FIRST tiles against 1.33x; its AP change in docs/benchmarks.md)")


def check_optimize_args(parser, args) -> None:
    """Refuse (exit 2) ``--box-head-bf16`` without ``--optimize bf16``."""
    if args.box_head_bf16 and args.optimize != "bf16":
        parser.error("--box-head-bf16 goes with --optimize bf16")


def apply_optimize(model, args):
    """``model`` in the chosen mode: norms folded and channels_last; bf16: autocast with the box head
    (unless --box-head-bf16) and the decoding layers in fp32."""
    if args.optimize != "off":
        model.optimize_for_inference(args.optimize, fp32_box_head=not args.box_head_bf16)
    return model
