#!/usr/bin/env python
"""Write the small TensorFlow checkpoints of tests/data/tf_checkpoint/ with TensorFlow itself.

Runs in a side environment with TensorFlow (not a gluon_rcnn dependency; made with tensorflow-cpu 2.15.1):

    TF_PY=/path/to/venv-with-tensorflow/bin/python
    $TF_PY bench/make_tf_checkpoint.py --out tests/data/tf_checkpoint \
        [--dump-script dump-model-params.py --tensorpack-src DIR]

The shipped files were made with tensorpack's scripts/dump-model-params.py and library (DIR holds its
``tensorpack/`` package) both at commit 02c38f26, ClaRAN's (``git show 02c38f26:scripts/dump-model-params.py``);
a second run gives byte-identical files.

It writes (with ``NAME.expected.npz``: the tensors as TensorFlow reads them back with ``tf.train.load_checkpoint``,
key = checkpoint name; for ``tensorpack/model-5`` those that its ``.npz`` below does not hold):

- ``dtypes`` (``tf.raw_ops.SaveV2``, the op ``tf.compat.v1.train.Saver`` runs): every numeric dtype a
  bundle can hold, scalars, empty tensors, a string tensor, and 600 small variables ``many/*`` (a 12 kB
  index: prefix-compressed keys, a restart point every 16; TF's table starts a new data block only past
  256 kB (table_options.h ``block_size = 262144``), so TF-written indexes of this size have one data block;
  tests/test_tf_checkpoint.py re-blocks this table to test several);
- ``sharded``: two SaveV2 bundles merged by ``tf.raw_ops.MergeV2Checkpoints`` (what a sharded Saver does):
  ``num_shards = 2``;
- ``partitioned``: a ``tf.compat.v1.get_variable`` with a ``fixed_size_partitioner(2)`` saved by a Saver
  (sliced entries, which the reader refuses);
- ``tensorpack/model-5``: what tensorpack's ``ModelSaver`` writes during training (02c38f26 and master
  callbacks/saver.py: ``tf.train.Saver(write_version=V2, save_relative_paths=True)``, ``save(...,
  global_step, write_meta_graph=False)``, and ``graph-*.meta`` through ``export_meta_graph``), for a subset
  of ClaRAN v0.2's variables with their real names and shapes (tests/data/tensorpack_manifests/
  ClaRAN-v0.2-FasterRCNN-R50FPN.json): the frozen stem and res2 block (FREEZE_AT=2: not trainable, in
  MODEL_VARIABLES, as tensorpack's ``freeze_variables(skip_collection=True)``), BN statistics
  (``mean/EMA``, ``variance/EMA``: MODEL_VARIABLES), trainable FPN/RPN/Fast R-CNN tensors, tensorpack's
  ``global_step``, ``learning_rate`` and an ``EMA/`` summary variable, after one
  ``tf.train.MomentumOptimizer(lr, 0.9)`` step (examples/FasterRCNN train.py ``optimizer()``), so the file
  also holds the ``*/Momentum`` slots;
- ``tensorpack/model-5.npz``: that checkpoint through tensorpack's ``scripts/dump-model-params.py --meta``
  (the script itself when ``--dump-script`` is given, else its rule replicated here: GLOBAL variables that
  are TRAINABLE or MODEL, saved with ``np.savez_compressed`` under TF tensor names ``name:0``).

Values are seeded (``numpy.random.RandomState(0)``), so the files are the same on every run.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["CUDA_VISIBLE_DEVICES"] = ""

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "tests" / "data" / "tensorpack_manifests" / "ClaRAN-v0.2-FasterRCNN-R50FPN.json"
#: the ClaRAN variables written to tensorpack/model-5 (real names and shapes, ~25 kB of float32): the stem's BN,
#: the first res2 conv with its BN, an FPN lateral and output bias, the RPN classifier, RPN and Fast R-CNN biases
TENSORPACK_SUBSET = ("conv0/bn/", "group0/block0/conv1/", "fpn/lateral_1x1_c2/b", "fpn/posthoc_3x3_p2/b",
                     "rpn/class/", "rpn/box/b", "fastrcnn/outputs/class/b", "fastrcnn/outputs/box/b")
FROZEN = ("conv0/", "group0/")  # ClaRAN's BACKBONE.FREEZE_AT=2 (config.py default): stem and res2 frozen


def tf():
    import tensorflow
    return tensorflow


def many_value(name: str) -> np.float32:
    """The value of dtypes' ``many/layerLL/varV`` (i = 10 L + V): float32(i / 7), recomputed by the test."""
    i = int(name[len("many/layer"):].split("/")[0]) * 10 + int(name.rsplit("var", 1)[1])
    return np.float32(i / 7)


def expected(prefix: str, out: Path, exclude=()):
    """Every tensor as TensorFlow reads it back (``tf.train.load_checkpoint``), into ``out`` but for ``exclude``,
    strings (an object array: npz without pickle) and dtypes' ``many/*`` (checked here against :func:`many_value`)."""
    reader = tf().train.load_checkpoint(prefix)
    vals = {}
    for name in reader.get_variable_to_shape_map():
        v = reader.get_tensor(name)
        if name.startswith("many/"):
            assert v.dtype == np.float32 and v.shape == () and v == many_value(name), (name, v)
        elif v.dtype != object and name not in exclude:
            vals[name] = v
    np.savez(out, **vals)
    return vals


def make_dtypes(out: Path, rng):
    t = tf()
    tensors = {
        "float32/matrix": rng.standard_normal((3, 4)).astype(np.float32),
        "float32/scalar": np.float32(rng.standard_normal()),
        "float32/empty": np.zeros((3, 0, 2), np.float32),
        "float64/vector": rng.standard_normal(5),
        "float16/vector": rng.standard_normal(7).astype(np.float16),
        "int8/v": np.array([-128, -1, 0, 127], np.int8),
        "int16/v": np.array([-32768, 1, 32767], np.int16),
        "int32/v": np.array([[-2 ** 31, 7], [3, 2 ** 31 - 1]], np.int32),
        "int64/global_step_like": np.int64(2 ** 40 + 5),
        "uint8/v": np.arange(250, 256, dtype=np.uint8),
        "uint16/v": np.array([0, 65535], np.uint16),
        "uint32/v": np.array([0, 2 ** 32 - 1], np.uint32),
        "uint64/v": np.array([0, 2 ** 64 - 1], np.uint64),
        "bool/v": np.array([True, False, True]),
        "bool/scalar": np.bool_(True),
        "complex64/v": (rng.standard_normal(3) + 1j * rng.standard_normal(3)).astype(np.complex64),
        "complex128/v": rng.standard_normal(2) + 1j * rng.standard_normal(2),
        "string/v": np.array([b"not", b"a weight"]),
    }
    for i in range(600):  # many entries: prefix-compressed keys, 38 restart points
        name = f"many/layer{i // 10:02d}/var{i % 10}"
        tensors[name] = many_value(name)
    names = sorted(tensors)
    t.raw_ops.SaveV2(prefix=str(out / "dtypes"), tensor_names=names, shape_and_slices=[""] * len(names),
                     tensors=[t.constant(tensors[n]) for n in names])
    return expected(str(out / "dtypes"), out / "dtypes.expected.npz")


def make_sharded(out: Path, tmp: Path, rng):
    t = tf()
    values = {"a/w": rng.standard_normal((2, 3)).astype(np.float32),
              "b/w": rng.standard_normal((2, 3)).astype(np.float32),
              "c/w": rng.standard_normal(4), "d/scalar": np.float64(rng.standard_normal())}
    parts = []
    for s, names in enumerate((["a/w", "c/w"], ["b/w", "d/scalar"])):
        parts.append(str(tmp / f"part{s}"))
        t.raw_ops.SaveV2(prefix=parts[-1], tensor_names=names, shape_and_slices=["", ""],
                         tensors=[t.constant(values[n]) for n in names])
    t.raw_ops.MergeV2Checkpoints(checkpoint_prefixes=parts, destination_prefix=str(out / "sharded"))
    return expected(str(out / "sharded"), out / "sharded.expected.npz")


def make_partitioned(out: Path):
    v1 = tf().compat.v1
    with tf().Graph().as_default():
        v1.get_variable("part/w", shape=(4, 3), initializer=v1.random_uniform_initializer(seed=1),
                        partitioner=v1.fixed_size_partitioner(2))
        v1.get_variable("whole/b", shape=(3,), initializer=v1.ones_initializer())
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            v1.train.Saver(write_version=v1.train.SaverDef.V2).save(sess, str(out / "partitioned"),
                                                                  write_meta_graph=False)
    (out / "checkpoint").unlink()  # the Saver's state file, with absolute paths


def make_tensorpack(out: Path, rng, args):
    """ClaRAN-named variables trained one Momentum step and saved as tensorpack's ModelSaver does."""
    v1 = tf().compat.v1
    manifest = json.loads(MANIFEST.read_text())["variables"]
    subset = [(v["name"], tuple(v["shape"])) for v in manifest if v["name"].startswith(TENSORPACK_SUBSET)]
    d = out / "tensorpack"
    d.mkdir(parents=True, exist_ok=True)
    with tf().Graph().as_default() as g:
        step = v1.train.get_or_create_global_step()                       # name "global_step"
        lr = v1.get_variable("learning_rate", initializer=0.003, trainable=False)
        loss, values = 0.0, []
        for name, shape in subset:
            model = name.endswith(("/EMA",))
            trainable = not (model or name.startswith(FROZEN))
            init = rng.standard_normal(shape).astype(np.float32) * (0.1 if name.endswith("/W") else 1.0)
            if name.endswith("variance/EMA"):
                init = np.abs(init) + 0.5
            var = v1.get_variable(name, shape=shape, initializer=v1.zeros_initializer(), trainable=trainable,
                                  collections=[v1.GraphKeys.GLOBAL_VARIABLES] + (
                                      [v1.GraphKeys.TRAINABLE_VARIABLES] if trainable else
                                      [v1.GraphKeys.MODEL_VARIABLES]))
            values.append((var, init))  # loaded after initialisation: no constants in the graph-*.meta
            if trainable:
                loss = loss + v1.reduce_sum(v1.square(var - 0.5)) * 1e-3
        ema = v1.get_variable("EMA/total_cost", shape=(), initializer=v1.zeros_initializer(), trainable=False)
        train = v1.train.MomentumOptimizer(lr, 0.9).minimize(loss, global_step=step)
        with v1.control_dependencies([train]):
            train = v1.assign(ema, 0.95 * ema + 0.05 * loss)
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            for var, init in values:
                var.load(init, sess)
            for _ in range(5):
                sess.run(train)
            saver = v1.train.Saver(write_version=v1.train.SaverDef.V2, save_relative_paths=True)
            saver.export_meta_graph(str(d / "graph-0.meta"), collection_list=g.get_all_collection_keys(),
                                    clear_devices=True, strip_default_attrs=True)
            prefix = saver.save(sess, str(d / "model"), global_step=step, write_meta_graph=False)
    vals = {n: tf().train.load_variable(prefix, n) for n, _ in tf().train.list_variables(prefix)}
    npz = d / "model-5.npz"
    if args.dump_script:
        run_dump_script(args, prefix, str(d / "graph-0.meta"), npz)
    else:  # dump-model-params.py's rule, as written there
        with tf().Graph().as_default():
            v1.train.import_meta_graph(str(d / "graph-0.meta"), clear_devices=True)
            dump = v1.get_collection(v1.GraphKeys.TRAINABLE_VARIABLES) + v1.get_collection(
                v1.GraphKeys.MODEL_VARIABLES)
            glob = {k.name for k in v1.global_variables()}
            keep = {k.name for k in set(dump) if k.name in glob}
        np.savez_compressed(npz, **{k + ":0": v for k, v in vals.items() if k + ":0" in keep})
    dumped = {k[:-2] for k in np.load(npz).files}
    expected(prefix, d / "model-5.expected.npz", exclude=dumped)  # the training state: slots, step, lr, EMA/
    print(f"{prefix}: {len(vals)} tensors, npz {sorted(np.load(npz).files)[:3]}... ({len(np.load(npz).files)})")


def run_dump_script(args, prefix, meta, npz):
    """tensorpack's own scripts/dump-model-params.py, with ``import tensorflow`` giving the TF1 API (and, for the
    2019 library, an empty ``tensorflow.contrib.graph_editor``, which the dump never calls)."""
    code = (
        "import sys, types, runpy, tensorflow as _tf\n"
        "v1 = _tf.compat.v1; v1.disable_v2_behavior()\n"
        "class TF1(types.ModuleType):\n"
        "    def __getattr__(self, n):\n"
        "        try: return getattr(v1, n)\n"
        "        except AttributeError: return getattr(_tf, n)\n"
        "m = TF1('tensorflow'); m.__path__ = _tf.__path__; m.__file__ = _tf.__file__; m.__version__ = _tf.__version__\n"
        "sys.modules['tensorflow'] = m\n"
        # tensorpack 2019 imports tf.contrib.graph_editor at module level (training input pipelines only)
        "ge = types.ModuleType('tensorflow.contrib.graph_editor'); ge.get_backward_walk_ops = None\n"
        "m.contrib = types.ModuleType('tensorflow.contrib'); m.contrib.graph_editor = ge\n"
        "sys.modules['tensorflow.contrib'] = m.contrib; sys.modules['tensorflow.contrib.graph_editor'] = ge\n"
        f"sys.path.insert(0, {str(args.tensorpack_src)!r})\n"
        f"sys.argv = ['dump-model-params.py', '--meta', {meta!r}, {prefix!r}, {str(npz)!r}]\n"
        f"runpy.run_path({str(args.dump_script)!r}, run_name='__main__')\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "tests" / "data" / "tf_checkpoint"))
    p.add_argument("--dump-script", help="tensorpack's scripts/dump-model-params.py (else its rule, replicated)")
    p.add_argument("--tensorpack-src", help="folder holding the tensorpack package the dump script imports")
    args = p.parse_args()
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    tmp = out / "_tmp"
    tmp.mkdir()
    rng = np.random.RandomState(0)
    make_dtypes(out, rng)
    make_sharded(out, tmp, rng)
    make_partitioned(out)
    make_tensorpack(out, rng, args)
    shutil.rmtree(tmp, ignore_errors=True)  # MergeV2Checkpoints removes it once empty
    for f in sorted(out.rglob("*")):
        if f.is_file():
            print(f"{f.relative_to(out)}: {f.stat().st_size} bytes")
    (out / "VERSIONS.json").write_text(json.dumps(
        {"tensorflow": tf().__version__, "numpy": np.__version__, "written_by": "bench/make_tf_checkpoint.py",
         "npz_by": str(Path(args.dump_script).name) if args.dump_script else "the rule of dump-model-params.py, "
                                                                           "replicated in make_tf_checkpoint.py"},
        indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
