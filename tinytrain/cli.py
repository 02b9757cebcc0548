"""The ``tinytrain`` command line.

Every error caused by bad input is one line on stderr and exit status 2; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tinytrain import __version__
from tinytrain.errors import TinytrainError, UsageError


def _cmd_inspect(args: argparse.Namespace) -> int:
    from tinytrain.frontends.load import load_model
    from tinytrain.report import print_inspect
    from tinytrain.stats import graph_stats

    graph = load_model(args.model)
    stats = graph_stats(graph)
    if args.json:
        payload = {
            "model": str(args.model),
            "name": graph.name,
            "inputs": [_tensor_json(graph, n) for n in graph.inputs],
            "outputs": [_tensor_json(graph, n) for n in graph.outputs],
            **{k: v for k, v in dataclasses.asdict(stats).items() if k not in ("ops", "op_histogram")},
            "op_histogram": dict(stats.op_histogram),
            "ops": [dataclasses.asdict(o) for o in stats.ops],
            "tensors": [_tensor_json(graph, t.name) for t in graph.tensors],
        }
        print(json.dumps(payload, indent=2))
    else:
        print_inspect(graph, stats, dump_ir=args.ir)
    return 0


def _tensor_json(graph: object, name: str) -> dict[str, object]:
    from tinytrain.ir.graph import Graph

    assert isinstance(graph, Graph)
    t = graph.tensor(name)
    q = None
    if t.quant is not None:
        q = {"scale": list(t.quant.scale), "zero_point": list(t.quant.zero_point), "axis": t.quant.axis}
    return {"name": t.name, "shape": list(t.shape), "dtype": t.dtype.value, "kind": t.kind.value, "quantization": q}


def _cmd_infer(args: argparse.Namespace) -> int:
    from tinytrain.frontends.load import load_model
    from tinytrain.report import progress_bar
    from tinytrain.sim.forward import Simulator

    graph = load_model(args.model)
    try:
        x = np.load(args.input, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read input array {args.input}: {exc}") from None
    sim = Simulator(graph)
    n = int(x.shape[0]) if x.ndim else 0
    with progress_bar("infer", n, quiet=args.quiet) as advance:
        y = sim.run([x], progress=advance)[0]
    out = Path(args.output)
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, y)
    if not args.quiet:
        print(f"wrote {out}: {y.dtype}{list(y.shape)}", file=sys.stderr)
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from tinytrain.frontends.keras_convert import convert_keras, load_calibration

    calib = load_calibration(args.calibration)
    data = convert_keras(args.keras_model, calib, int8_io=not args.float_io)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    # Read it back: the converted model must be one tinytrain can run.
    from tinytrain.frontends.tflite import load_tflite
    from tinytrain.sim.forward import Simulator

    Simulator(load_tflite(data))
    print(f"wrote {out} ({len(data)} bytes)", file=sys.stderr)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from tinytrain.frontends.load import load_model
    from tinytrain.frontends.tflite_writer import write_tflite

    data = write_tflite(load_model(args.model))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    print(f"wrote {out} ({len(data)} bytes)", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tinytrain", description="On-device training for microcontrollers.")
    p.add_argument("--version", action="version", version=f"tinytrain {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("inspect", help="ops, tensors, parameters, MACs and naive peak memory of a model")
    s.add_argument("model", help=".tflite model or MCUNet .pkl checkpoint")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--ir", action="store_true", help="also print the IR text dump")
    s.set_defaults(func=_cmd_inspect)

    s = sub.add_parser("infer", help="run the model in tinytrain's bit-exact simulator")
    s.add_argument("model")
    s.add_argument("--input", required=True, help=".npy of shape (N, *input_shape[1:]) in the model's input dtype")
    s.add_argument("--output", required=True, help=".npy written with the model's first output per sample")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=_cmd_infer)

    s = sub.add_parser("convert", help="Keras model -> int8 .tflite (TFLite converter, representative data)")
    s.add_argument("keras_model", help=".keras or .h5 file")
    s.add_argument("--calibration", required=True, help=".npy/.npz of calibration inputs (float32, N x input shape)")
    s.add_argument("-o", "--output", required=True)
    s.add_argument(
        "--float-io", action="store_true", help="keep float32 input/output (QUANTIZE/DEQUANTIZE at the edges)"
    )
    s.set_defaults(func=_cmd_convert)

    s = sub.add_parser("export", help="write a model (e.g. an MCUNet checkpoint) as .tflite")
    s.add_argument("model")
    s.add_argument("-o", "--output", required=True)
    s.set_defaults(func=_cmd_export)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except TinytrainError as exc:
        if args.debug:
            raise
        print(f"tinytrain: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tinytrain: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
