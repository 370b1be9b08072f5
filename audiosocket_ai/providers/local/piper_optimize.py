"""Make a Piper voice cheaper to run, once per machine, from the voice file itself.

Piper voices are VITS models exported to ONNX. Nearly all of their CPU time goes to the
HiFi-GAN decoder, which turns the acoustic latent into 22 kHz samples with three
``ConvTranspose`` upsamplers and stacks of 1-D convolutions. onnxruntime runs those ops
far slower than it could, for two reasons this module removes:

* **ConvTranspose** (stride ``s``, kernel ``2s``, padding ``s/2``) has no fast CPU kernel;
  it runs as a GEMM followed by a col2im scatter. The same operator is a *polyphase*
  pair of kernel-2 convolutions: output sample ``q*s + r`` only ever reads input
  samples ``q-1, q`` (phases ``r < s/2``) or ``q, q+1`` (the others), weighted by two
  taps of the transposed kernel. So it becomes two ``Conv`` nodes (all phases of each
  kind stacked as output channels), a ``Concat`` and a depth-to-space
  ``Reshape``/``Transpose``/``Reshape``. Same sums of the same products: exact in fp32.
* **1-D Conv** runs through onnxruntime's generic im2col path, while 2-D convolutions
  get its blocked NCHWc kernels. A 1-D convolution is a ``1 x K`` 2-D convolution of the
  input with a unit height axis, so each becomes ``Unsqueeze`` → ``Conv(1 x K)`` →
  ``Squeeze``. Also exact.

These two rewrites make level ``"exact"``: the source's output to float rounding
(~3e-5 of full scale at most, 93 dB SNR), 1.35x less CPU (0.059 vs 0.080 CPU-s per second
of audio on one thread, measured on a 2-core x86 machine).

Level ``"int8"`` additionally quantizes the whole decoder to 8 bits (static QDQ: per
channel int8 weights, uint8 activations) so its convolutions run on integer kernels:
2.2x less CPU than the source in total (0.037). The activation ranges come from running
the model on a fixed set of English sentences (:data:`CALIBRATION_TEXT`), with
99.999th-percentile ranges so that a few outlier samples do not waste the 256 levels.
The cost is quality: ~16 dB SNR against the source (audible noise), and Whisper tiny.en
misheard ~6 % of the words of 40 test sentences (through 8 kHz, like a phone line)
against ~3 % for the source. Durations are unchanged: the encoder, duration predictor and
flow stay fp32; they decide what is said and for how long, and cost little.

The result is built into a cache directory the first time (~3 s and 0.6 GB of memory
for ``exact``, ~14 s and 1.3 GB for ``int8``, for the 63 MB bundled voice), keyed by the
source's SHA-256, the level and :data:`RECIPE_VERSION`, and checked against the source
before it is used: ``exact`` must reproduce the source's deterministic output, ``int8``
must stay close to it. Any failure (unusual graph, disk full, missing package) is logged
as a warning and the source model is used instead: an optimization must never keep the
server from starting.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    import onnx
    from numpy.typing import NDArray

logger = logging.getLogger(__name__)

Level = Literal["exact", "int8"]

RECIPE_VERSION = 1
"""Part of the cache key: bump it whenever the rewrite or quantization recipe changes."""

CACHE_ENV = "AUDIOSOCKET_AI_CACHE"
"""Environment variable naming the cache directory (default ``~/.cache/audiosocket-ai/voices``)."""

CALIBRATION_TEXT: tuple[str, ...] = (
    "Hello, this is the automated assistant speaking.",
    "Thank you for calling, how can I help you today?",
    "We could not find a reservation under that name.",
    "Would you like me to call you back later this week?",
    "Your appointment is confirmed for Tuesday at three thirty in the afternoon.",
    "Please say yes or no.",
    "I understand, let me check that for you right away.",
    "Your package was shipped yesterday and should arrive soon.",
    "The total comes to forty two dollars and seventeen cents.",
    "Thanks for waiting, I found your record.",
)
"""Sentences the int8 activation ranges are measured on: phone-assistant English with
questions, numbers and short answers, so the ranges cover what the voice will say."""

_SECONDS_PER_MB = {"exact": 0.05, "int8": 0.23}
"""Rough build time per MB of source model, for the log line only (measured: see PiperTTS)."""

_EXACT_MAX_ABS_DIFF = 1e-3
"""Largest sample difference (full scale 1.0) an ``exact`` build may show; fp32 reordering
gives ~1e-6, a wrong rewrite gives ~0.1 or more."""

_INT8_MIN_SNR_DB = 8.0
"""Smallest signal-to-error ratio against the source an ``int8`` build may show (a sound
build measures well above this; a broken one is near or below 0 dB)."""

_DECODER_PREFIX = "/dec/"
_DECODER_QUANTIZED_OPS = ("Conv", "LeakyRelu", "Add", "Concat", "Reshape", "Transpose")


class OptimizationError(RuntimeError):
    """The voice could not be optimized (the reason is in the message)."""


def default_cache_dir() -> Path:
    """``$AUDIOSOCKET_AI_CACHE`` if set, else ``~/.cache/audiosocket-ai/voices``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "audiosocket-ai" / "voices"


def optimized_voice(source: Path, level: Level, cache_dir: Path | None = None) -> Path:
    """Return an optimized copy of the Piper voice ``source`` (its ``.onnx.json`` beside it).

    Built on the first call for a given source, level and recipe, then reused. Safe to
    call from several threads or processes at once: one builds under a lock file while
    the others wait for it, and the file appears by an atomic rename, so nobody sees a
    partial model. On any failure, logs a warning with the reason and returns ``source``.
    """
    source = Path(source)
    try:
        return _cached_or_built(source, level, cache_dir if cache_dir is not None else default_cache_dir())
    except Exception as exc:  # never fatal: the source model always works
        logger.warning("cannot optimize Piper voice %s (%s: %s); using it unoptimized",
                       source.name, type(exc).__name__, exc)
        return source


def _cached_or_built(source: Path, level: Level, cache_dir: Path) -> Path:
    if level not in ("exact", "int8"):
        raise OptimizationError(f"unknown level {level!r}")
    digest = _sha256(source)
    target = cache_dir / f"{source.stem}.{level}.r{RECIPE_VERSION}.{digest[:16]}.onnx"
    if _complete(target):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _locked(target.with_name(target.name + ".lock")):
        if _complete(target):  # built by whoever held the lock before us
            return target
        estimate = _SECONDS_PER_MB[level] * source.stat().st_size / 1e6
        logger.warning("optimizing Piper voice %s for this machine (once, ~%.0f s): level %s, into %s",
                       source.name, max(1.0, estimate), level, cache_dir)
        began = time.perf_counter()
        _atomic_copy(Path(f"{source}.json"), Path(f"{target}.json"))
        with _temporary(target) as tmp:
            _build(source, level, tmp)
            os.replace(tmp, target)
        logger.info("optimized Piper voice %s (%s) in %.1f s: %s",
                    source.name, level, time.perf_counter() - began, target)
    return target


def _complete(target: Path) -> bool:
    return target.is_file() and Path(f"{target}.json").is_file()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Exclusive advisory lock (POSIX ``flock``; no lock where unavailable: the atomic
    rename still keeps files whole, concurrent builders just duplicate the work)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(lock_path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def _temporary(target: Path) -> Iterator[Path]:
    """A fresh path in ``target``'s directory (so a rename onto ``target`` is atomic),
    removed afterwards unless it was renamed away."""
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def _atomic_copy(src: Path, dst: Path) -> None:
    with _temporary(dst) as tmp:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)


# --- building -------------------------------------------------------------------------------


def _build(source: Path, level: Level, out: Path) -> None:
    """Write the optimized model for ``level`` to ``out`` and check it against ``source``."""
    import onnx

    model = onnx.load(str(source))
    # int8: the decoder's convolutions stay 1-D, where onnxruntime has QDQ int8 kernels.
    rewritten = rewrite_exact(model, conv2d_decoder=level == "exact")
    if rewritten == 0:
        raise OptimizationError("no ConvTranspose or 1-D Conv node that the rewrite applies to")
    reference = _Reference(source)
    if level == "exact":
        onnx.save(model, str(out))
        error = reference.max_abs_diff(out)
        if not error <= _EXACT_MAX_ABS_DIFF:
            raise OptimizationError(f"rewritten model differs from the source by {error:.3g}")
    else:
        with _temporary(out) as fp32:
            onnx.save(model, str(fp32))
            _quantize_decoder(fp32, out, model, reference)
        snr = reference.snr_db(out)
        if not snr >= _INT8_MIN_SNR_DB:
            raise OptimizationError(f"quantized model is too far from the source ({snr:.1f} dB SNR)")


def rewrite_exact(model: onnx.ModelProto, *, conv2d_decoder: bool = True) -> int:
    """Rewrite ``model`` in place (see the module docstring); return how many nodes changed.

    ConvTranspose nodes that are not of the ``k = 2s, p = s/2`` shape, and convolutions
    whose weights are not constants, are left as they are.
    """
    from onnx import numpy_helper

    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    weights: dict[str, NDArray[Any]] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    added: dict[str, NDArray[Any]] = {}
    nodes: list[onnx.NodeProto] = []
    changed = 0
    for node in graph.node:
        replacement: list[onnx.NodeProto] | None = None
        if node.op_type == "ConvTranspose":
            replacement = _polyphase(node, weights, added)
        elif node.op_type == "Conv" and opset >= 13 and (conv2d_decoder or not node.name.startswith(_DECODER_PREFIX)):
            replacement = _as_conv2d(node, weights, added)
        if replacement is None:
            nodes.append(node)
        else:
            nodes.extend(replacement)
            changed += 1
    if not changed:
        return 0
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input}
    kept = [t for t in graph.initializer if t.name in used]
    kept += [numpy_helper.from_array(array, name) for name, array in added.items() if name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return changed


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _polyphase(node: onnx.NodeProto, weights: dict[str, NDArray[Any]],
               added: dict[str, NDArray[Any]]) -> list[onnx.NodeProto] | None:
    """ConvTranspose(stride s, kernel 2s, pad s/2) as two kernel-2 Convs + depth-to-space.

    With ``u = r + s/2``, output ``q*s + r`` is ``W[u mod s]·x[q + u div s]
    + W[s + u mod s]·x[q + u div s - 1]``: phases ``r < s/2`` read ``x[q-1], x[q]`` (a
    kernel-2 conv padded on the left), the others ``x[q], x[q+1]`` (padded on the right).
    Output length ``L*s``, as the ConvTranspose's ``(L-1)s - 2p + 2s``.
    """
    from onnx import helper

    if len(node.input) != 3 or node.input[1] not in weights or node.input[2] not in weights:
        return None
    w, bias = weights[node.input[1]], weights[node.input[2]]
    at = _attributes(node)
    if w.ndim != 3 or w.dtype != np.float32 or len(at.get("strides", [])) != 1:
        return None
    s = int(at["strides"][0])
    cin, cout, k = w.shape
    if (k != 2 * s or s % 2 or list(at.get("pads", [0, 0])) != [s // 2, s // 2] or at.get("group", 1) != 1
            or list(at.get("dilations", [1])) != [1] or any(at.get("output_padding", []))
            or at.get("output_shape") or at.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")):
        return None
    base = f"{node.name or node.output[0]}/polyphase"
    outs: list[str] = []
    new: list[onnx.NodeProto] = []
    for half, phases, pads in (("early", range(s // 2), [1, 0]), ("late", range(s // 2, s), [0, 1])):
        taps = [(s + (r + s // 2) % s, (r + s // 2) % s) for r in phases]  # (tap on earlier, tap on later input)
        kernel = np.stack([np.stack([w[:, :, a].T, w[:, :, b].T], axis=-1) for a, b in taps])
        added[f"{base}/{half}.weight"] = kernel.reshape(len(taps) * cout, cin, 2).astype(np.float32)
        added[f"{base}/{half}.bias"] = np.tile(bias, len(taps)).astype(np.float32)
        outs.append(f"{base}/{half}.out")
        new.append(helper.make_node("Conv", [node.input[0], f"{base}/{half}.weight", f"{base}/{half}.bias"],
                                    [outs[-1]], name=f"{base}/{half}/Conv", kernel_shape=[2], pads=pads))
    # channels [phase0 c0..cN, phase1 c0..cN, ...] -> (N, s, C, L) -> (N, C, L, s) -> (N, C, L*s)
    added[f"{base}/split"] = np.array([0, s, cout, -1], np.int64)
    added[f"{base}/merge"] = np.array([0, cout, -1], np.int64)
    new += [
        helper.make_node("Concat", outs, [f"{base}/cat"], name=f"{base}/Concat", axis=1),
        helper.make_node("Reshape", [f"{base}/cat", f"{base}/split"], [f"{base}/split.out"], name=f"{base}/Split"),
        helper.make_node("Transpose", [f"{base}/split.out"], [f"{base}/t"], name=f"{base}/Transpose",
                         perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", [f"{base}/t", f"{base}/merge"], list(node.output), name=f"{base}/Merge"),
    ]
    return new


def _as_conv2d(node: onnx.NodeProto, weights: dict[str, NDArray[Any]],
               added: dict[str, NDArray[Any]]) -> list[onnx.NodeProto] | None:
    """1-D Conv as Unsqueeze(axis 2) → Conv(1 x K) → Squeeze(axis 2); same arithmetic."""
    from onnx import helper

    if len(node.input) < 2 or node.input[1] not in weights:
        return None
    w = weights[node.input[1]]
    at = _attributes(node)
    if w.ndim != 3 or at.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return None
    pads = list(at.get("pads", [0, 0]))
    weight_2d = f"{node.input[1]}/as_2d"
    added.setdefault(weight_2d, w[:, :, None, :])
    added.setdefault("piper_optimize/axis2", np.array([2], np.int64))
    base = node.name or node.output[0]
    return [
        helper.make_node("Unsqueeze", [node.input[0], "piper_optimize/axis2"], [f"{base}/x2d"],
                         name=f"{base}/Unsqueeze"),
        helper.make_node("Conv", [f"{base}/x2d", weight_2d, *node.input[2:]], [f"{base}/y2d"], name=node.name,
                         kernel_shape=[1, int(w.shape[2])], pads=[0, pads[0], 0, pads[1]],
                         strides=[1, int(at.get("strides", [1])[0])], dilations=[1, int(at.get("dilations", [1])[0])],
                         group=int(at.get("group", 1))),
        helper.make_node("Squeeze", [f"{base}/y2d", "piper_optimize/axis2"], list(node.output), name=f"{base}/Squeeze"),
    ]


class _Reference:
    """The source voice, for calibration inputs and for checking a build against it."""

    def __init__(self, source: Path) -> None:
        import onnxruntime  # type: ignore[import-untyped,unused-ignore]
        from piper import PiperConfig, PiperVoice

        with open(f"{source}.json", encoding="utf-8") as fh:
            self.config = PiperConfig.from_dict(json.load(fh))
        self._session = _session(source)
        self._voice = PiperVoice(session=self._session, config=self.config)
        self._ort = onnxruntime
        self._check_ids = self.phoneme_ids(CALIBRATION_TEXT[:2])
        self._expected = self.run(self._session, self._check_ids, deterministic=True)

    def phoneme_ids(self, sentences: tuple[str, ...]) -> list[int]:
        return [i for text in sentences for phonemes in self._voice.phonemize(text)
                for i in self._voice.phonemes_to_ids(phonemes)]

    def inputs(self, ids: list[int], *, deterministic: bool) -> dict[str, NDArray[Any]]:
        noise = (0.0, 0.0) if deterministic else (self.config.noise_scale, self.config.noise_w_scale)
        return {
            "input": np.array([ids], np.int64),
            "input_lengths": np.array([len(ids)], np.int64),
            "scales": np.array([noise[0], self.config.length_scale, noise[1]], np.float32),
        }

    def run(self, session: Any, ids: list[int], *, deterministic: bool) -> NDArray[np.float32]:
        feed = self.inputs(ids, deterministic=deterministic)
        names = {i.name for i in session.get_inputs()}
        audio = session.run(None, {k: v for k, v in feed.items() if k in names})[0]
        return np.asarray(audio, np.float32).reshape(-1)

    def _built_output(self, path: Path) -> NDArray[np.float32]:
        audio = self.run(_session(path), self._check_ids, deterministic=True)
        if audio.shape != self._expected.shape or not np.isfinite(audio).all():
            raise OptimizationError(f"built model gives {audio.shape[0]} samples, not {self._expected.shape[0]}")
        return audio

    def max_abs_diff(self, path: Path) -> float:
        return float(np.max(np.abs(self._built_output(path) - self._expected)))

    def snr_db(self, path: Path) -> float:
        error = self._built_output(path) - self._expected
        return float(10 * np.log10(np.sum(self._expected**2) / max(float(np.sum(error**2)), 1e-20)))


def _session(path: Path) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _quantize_decoder(fp32: Path, out: Path, model: onnx.ModelProto, reference: _Reference) -> None:
    """Static QDQ int8 quantization of the decoder's nodes, calibrated on CALIBRATION_TEXT."""
    from onnxruntime.quantization import (  # type: ignore[import-untyped,unused-ignore]
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Sentences(CalibrationDataReader):  # type: ignore[misc]
        # One feed per sentence, collected one at a time (CalibStridedMinMax = 1 below):
        # the calibrator keeps every decoder tensor of the runs it collects at once, ~0.25 GB
        # per second of speech, and its histograms merge across collections, not across
        # differently shaped runs within one collection.
        def __init__(self) -> None:
            self._feeds = [reference.inputs(reference.phoneme_ids((text,)), deterministic=False)
                           for text in CALIBRATION_TEXT]
            self._pending: Iterator[dict[str, NDArray[Any]]] = iter(self._feeds)

        def __len__(self) -> int:
            return len(self._feeds)

        def set_range(self, start_index: int, end_index: int) -> None:
            self._pending = iter(self._feeds[start_index:end_index])

        def get_next(self) -> dict[str, NDArray[Any]] | None:
            return next(self._pending, None)

    decoder = [n.name for n in model.graph.node
               if n.name.startswith(_DECODER_PREFIX) and n.op_type in _DECODER_QUANTIZED_OPS]
    if not decoder:
        raise OptimizationError(f"no decoder nodes (named {_DECODER_PREFIX}...) to quantize")
    quiet = _DropLibraryChatter()
    logging.getLogger().addFilter(quiet)
    try:
        # The quantizer print()s its settings: stdout may be a protocol pipe, so send them to stderr.
        with contextlib.redirect_stdout(sys.stderr):
            quantize_static(
                str(fp32), str(out), Sentences(),
                quant_format=QuantFormat.QDQ, op_types_to_quantize=list(_DECODER_QUANTIZED_OPS),
                nodes_to_quantize=decoder, per_channel=True, activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.Percentile,
                extra_options={"CalibPercentile": 99.999, "CalibStridedMinMax": 1},
            )
    finally:
        logging.getLogger().removeFilter(quiet)


class _DropLibraryChatter(logging.Filter):
    """Drops the quantizer's advice, logged on the root logger ("consider pre-processing")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "onnxruntime" not in record.pathname or record.levelno >= logging.ERROR


__all__ = ["CACHE_ENV", "CALIBRATION_TEXT", "RECIPE_VERSION", "Level", "OptimizationError", "default_cache_dir",
           "optimized_voice", "rewrite_exact"]
