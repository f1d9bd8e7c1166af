"""Export in a child process, so TensorFlow's memory leaves with it.

A process that has imported TensorFlow keeps its runtime (over a gigabyte, more after building
and converting ResNet50) until it exits. The demo exports once on its first start and then
serves for days: running the export in a child keeps the server's memory to what search needs.

    info, peak_rss = export_in_child(ExportConfig(out=Path("model.onnx"), weights="imagenet"))
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from dataclasses import dataclass

from fashionrec_export.export_resnet50 import ExportConfig, add_arguments, config_from_args, export_model, say

from fashionrec_onnx.errors import ExportError, FashionrecError, WeightsUnavailableError
from fashionrec_onnx.model import ModelInfo, read_model_info

log = logging.getLogger("fashionrec.export")

EXIT_WEIGHTS_UNAVAILABLE = 3  # the child's own code, so the parent can fall back on it alone


@dataclass(frozen=True)
class ChildExport:
    info: ModelInfo
    peak_rss_bytes: int  # the child's ru_maxrss: what an export needs in memory


def _argv(config: ExportConfig) -> list[str]:
    return [
        "--out", str(config.out), "--weights", config.weights, "--seed", str(config.seed),
        "--pooling", config.pooling, "--size", str(config.size), "--resize", config.resize,
        "--opset", str(config.opset),
    ]  # fmt: skip


def export_in_child(config: ExportConfig) -> ChildExport:
    """Run ``export_model(config)`` in a fresh Python; its output passes through to stderr.

    Raises WeightsUnavailableError when the weights cannot be had, ExportError for anything else.
    """
    command = [sys.executable, "-m", "fashionrec_export.isolated", *_argv(config)]
    # One pipe for both streams (Keras prints its download progress to stdout): all of the
    # child's output goes to this process's stderr, so stdout stays the caller's own.
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    )
    error = ""
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("error: "):
                error = line.removeprefix("error: ").strip()  # raised below, not printed twice
            else:
                sys.stderr.write(line)
                sys.stderr.flush()
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = code = os.waitstatus_to_exitcode(status)
    finally:
        if process.returncode is None:  # interrupted: do not leave TensorFlow running
            process.kill()
            process.wait()
        process.stdout.close()  # type: ignore[union-attr]
    if code == EXIT_WEIGHTS_UNAVAILABLE:
        raise WeightsUnavailableError(error)
    if code < 0:
        raise ExportError(
            f"the export process was killed by signal {-code} (out of memory? see docs/model.md for "
            "what an export needs); nothing was written."
        )
    if code != 0:
        raise ExportError(error or f"the export process failed with exit code {code}.")
    done = ChildExport(read_model_info(config.out), usage.ru_maxrss * 1024)  # Linux: kilobytes
    log.info("exported %s in a child process (peak memory %.1f GB)", config.out, done.peak_rss_bytes / 1e9)
    return done


def _child_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m fashionrec_export.isolated")
    add_arguments(parser)
    try:
        export_model(config_from_args(parser.parse_args(argv)))
    except WeightsUnavailableError as exc:
        say(f"error: {exc}")
        return EXIT_WEIGHTS_UNAVAILABLE
    except FashionrecError as exc:
        say(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
