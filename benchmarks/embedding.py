"""Embedding speed: the classic Keras notebook way against onnxruntime, in one interleaved run.

(a) baseline: Keras ``model.predict`` one image at a time, as the fashion-recommender notebooks
do; (b) a compiled ``tf.function`` on batches; (c) onnxruntime at batch 1 and batched, with 1 and
2 threads; (d) the int8 model. Every round runs every method on the same images, so a noisy
neighbour slows all of them alike; medians and p95 are per image.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.common import Sizes, fashion_pixels, summary_ms, timed
from benchmarks.ingest import make_photos


def _keras(model_size: int):  # -> (keras model, tf.function)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from fashionrec_export.export_resnet50 import ExportConfig, build_keras_model, make_serving_function

    config = ExportConfig(out=Path("unused.onnx"), weights="random", seed=0, size=model_size)
    model = build_keras_model(config)
    return model, make_serving_function(model, model_size)


def run(model: Path, int8_model: Path | None, sizes: Sizes) -> dict[str, object]:
    import keras

    from fashionrec_onnx import Embedder, read_model_info
    from fashionrec_onnx.quality.datasets import load_split

    info = read_model_info(model)
    size = info.input_size
    images, _ = load_split("test")
    pixels = fashion_pixels(images[: max(sizes.batch, sizes.baseline_images)], size)
    keras_model, serve = _keras(size)
    preprocess = keras.applications.resnet50.preprocess_input

    def keras_one(image: np.ndarray) -> None:
        keras_model.predict(preprocess(image[None].astype(np.float32)), verbose=0)

    embedders = {threads: Embedder(model, threads=threads) for threads in (1, 2)}
    int8 = Embedder(int8_model, threads=2) if int8_model else None

    per_image: dict[str, Callable[[np.ndarray], None]] = {
        "keras_predict_batch1 (baseline)": keras_one,
        "onnxruntime_batch1_1thread": lambda x: embedders[1].embed_pixels(x[None]),
        "onnxruntime_batch1_2threads": lambda x: embedders[2].embed_pixels(x[None]),
    }
    batched: dict[str, Callable[[np.ndarray], None]] = {
        f"tf_function_batch{sizes.batch}": lambda b: serve(b),
        f"onnxruntime_batch{sizes.batch}_1thread": lambda b: embedders[1].embed_pixels(b, len(b)),
        f"onnxruntime_batch{sizes.batch}_2threads": lambda b: embedders[2].embed_pixels(b, len(b)),
    }
    if int8 is not None:
        per_image["onnxruntime_int8_batch1_2threads"] = lambda x: int8.embed_pixels(x[None])
        batched[f"onnxruntime_int8_batch{sizes.batch}_2threads"] = lambda b: int8.embed_pixels(b, len(b))

    samples: dict[str, list[float]] = {name: [] for name in [*per_image, *batched]}
    batch = pixels[: sizes.batch]
    for function in [*per_image.values()]:
        function(pixels[0])  # warm-up: graph compilation, memory arenas
    for function in batched.values():
        function(batch)
    for _ in range(sizes.rounds):
        for name, function in per_image.items():
            for image in pixels[: sizes.baseline_images]:
                samples[name].append(timed(lambda f=function, i=image: f(i)))
        for name, function in batched.items():
            samples[name].append(timed(lambda f=function: f(batch)) / len(batch))

    methods = {name: summary_ms(values) for name, values in samples.items()}
    baseline = methods["keras_predict_batch1 (baseline)"]["median_ms"]
    for result in methods.values():
        result["speedup_vs_baseline"] = baseline / result["median_ms"]

    ingest = _ingest(keras_model, embedders[2], int8, sizes, size)
    for embedder in [*embedders.values(), int8]:
        if embedder is not None:
            embedder.close()
    return {
        "model": {"input_size": size, "weights": info.weights, "int8": int8_model is not None},
        "images": "Fashion-MNIST test images, squashed to the model input",
        "methods": methods,
        "ingest": ingest,
    }


def _ingest(keras_model, fp32, int8, sizes: Sizes, size: int) -> dict[str, object]:
    """JPEG files on disk to vectors: the notebooks' load_img + predict loop against ours."""
    import keras

    with tempfile.TemporaryDirectory() as tmp:
        photos = make_photos(Path(tmp), sizes.ingest_photos)
        few = photos[: max(2, sizes.ingest_photos // 8)]  # the baseline is slow: fewer files

        def notebook_way() -> None:
            for path in few:
                image = keras.utils.img_to_array(keras.utils.load_img(path, target_size=(size, size)))
                keras_model.predict(keras.applications.resnet50.preprocess_input(image[None]), verbose=0)

        runs: dict[str, list[float]] = {"keras_load_img_predict (baseline)": [], "fashionrec_fp32": []}
        if int8 is not None:
            runs["fashionrec_int8"] = []
        for _ in range(sizes.rounds):
            runs["keras_load_img_predict (baseline)"].append(timed(notebook_way) / len(few))
            runs["fashionrec_fp32"].append(timed(lambda: fp32.embed(photos, sizes.batch)) / len(photos))
            if int8 is not None:
                runs["fashionrec_int8"].append(timed(lambda: int8.embed(photos, sizes.batch)) / len(photos))
    result = {name: summary_ms(values) for name, values in runs.items()}
    baseline = result["keras_load_img_predict (baseline)"]["median_ms"]
    for value in result.values():
        value["speedup_vs_baseline"] = baseline / value["median_ms"]
    return {"photos": "1000x1500 JPEG q90", "count": len(photos), "methods": result}
