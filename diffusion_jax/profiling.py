"""Where a compiled step's time goes, and how much of an accelerator it uses.

`profile` runs a compiled program under the JAX profiler and adds up the time of each XLA op (the profiler's
`hlo_op` events) by what the op does (`op_kind`): convolutions forward, their input and weight gradients, attention,
normalisation and activations, dense layers, the optimizer, noise generation, cross-device means, and the rest. The
kind comes from the compiled HLO: the op's opcode (a fusion counts as the convolution or dot it contains) and the
name JAX recorded for it (`jvp(...)` = forward, `transpose(jvp(...))` = backward; module paths such as
`ResBlock_0/GroupNorm_0`; the train step's `noise` and `optimizer` scopes).

`accelerator_peak` is a chip's dense bfloat16 peak (vendor datasheets), the denominator of model FLOP utilisation
(MFU = model FLOPs per image x images/s / (chips x peak)); CPUs have no such figure, so the CPU benchmarks measure
their own peak with a large matmul instead.
"""
import collections
import glob
import re
import tempfile
import time
from typing import Any, Callable, Optional

import jax

# (substring of jax.Device.device_kind, dense bfloat16 TFLOP/s per chip), first match wins.
BF16_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("H800", 989.0), ("B200", 2250.0), ("A100", 312.0),
    ("L4", 121.0), ("TPU v6 lite", 918.0), ("TPU v5 lite", 197.0), ("TPU v5", 459.0), ("TPU v4", 275.0),
    ("TPU v3", 123.0), ("TPU v2", 45.0),
)


def accelerator_peak(device_kind: str, override_tflops: float = 0.0) -> Optional[float]:
    """Dense bf16 peak FLOP/s of one chip of `device_kind`; `override_tflops` > 0 wins; None if unknown (or a CPU)."""
    if override_tflops > 0:
        return override_tflops * 1e12
    for key, tflops in BF16_PEAK_TFLOPS:
        if key.lower() in device_kind.lower():
            return tflops * 1e12
    return None


def utilisation(flops_per_image: float, images_per_s: float, devices: list, override_tflops: float = 0.0) -> str:
    """One line: achieved FLOP/s and, on a known accelerator (or with `override_tflops`), MFU against its bf16 peak."""
    achieved = flops_per_image * images_per_s
    kind = devices[0].device_kind
    if devices[0].platform == "cpu" and override_tflops <= 0:
        return f"{achieved / 1e9:.1f} GFLOP/s achieved (CPU: see the matmul peak)"
    peak = accelerator_peak(kind, override_tflops)
    if peak is None:
        return (f"{achieved / 1e12:.2f} TFLOP/s achieved; no bf16 peak known for {kind!r}: pass --peak_tflops "
                f"(its dense bf16 TFLOP/s per chip) for MFU")
    return (f"{achieved / 1e12:.2f} TFLOP/s achieved = MFU {achieved / (peak * len(devices)):.1%} of "
            f"{len(devices)} x {peak / 1e12:.0f} TFLOP/s ({kind}, dense bf16)")


def _cost_flops(compiled: Any) -> float:
    """FLOPs of one device's compiled program from XLA's cost analysis (nan if XLA gives none)."""
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    return float(analysis.get("flops", float("nan")))


def compiled_flops(fn: Callable, *args) -> float:
    """FLOPs of `jax.jit(fn)(*args)` from XLA's cost analysis of the compiled program (nan if XLA gives none)."""
    return _cost_flops(jax.jit(fn).lower(*args).compile())


def flops_per_example(compiled: Any, global_batch: int, num_devices: int) -> float:
    """FLOPs per example of a compiled data-parallel step (XLA's cost analysis counts one device's program)."""
    return _cost_flops(compiled) * num_devices / global_batch


_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = (.*?) ([a-z][a-z0-9-]*)\(")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%(\S+) ")
_SHAPE = re.compile(r"\[([0-9,]*)\]")


def parse_hlo(text: str) -> tuple[dict, set]:
    """Compiled HLO text -> ({instruction: (opcode, op_name, shape)}, {sorted kernel shape of each parameter}).

    A fusion's opcode is reported as 'convolution' or 'dot' when its fused computation contains one."""
    computations: dict[str, set] = collections.defaultdict(set)
    instructions, calls, kernels, current = {}, {}, set(), ""
    for line in text.splitlines():
        m = _INSTRUCTION.match(line)
        if not m:
            c = _COMPUTATION.match(line)
            current = c.group(1) if c and line.rstrip().endswith("{") else current
            continue
        name, shape_text, opcode = m.groups()
        computations[current].add(opcode)
        op_name = re.search(r'op_name="([^"]*)"', line)
        op_name = op_name.group(1) if op_name else ""
        dims = _SHAPE.search(shape_text)
        shape = tuple(int(d) for d in dims.group(1).split(",") if d) if dims else ()
        if opcode == "parameter" and "kernel" in op_name and len(shape) >= 2:
            kernels.add(tuple(sorted(shape)))
        called = re.search(r"calls=%([^\s,}]+)", line)
        if opcode == "fusion" and called:
            calls[name] = called.group(1)
        instructions[name] = (opcode, op_name, shape)
    for name, called in calls.items():
        _, op_name, shape = instructions[name]
        inner = computations.get(called, set())
        kind = "convolution" if "convolution" in inner else "dot" if "dot" in inner else "fusion"
        instructions[name] = (kind, op_name, shape)
    return instructions, kernels


def op_kind(opcode: str, op_name: str, shape: tuple, kernel_shapes: set) -> str:
    """What an XLA op does in a train step, from its opcode, JAX name and output shape (see the module doc)."""
    backward = "transpose(" in op_name
    side = "backward" if backward else "forward"
    if "/optimizer/" in op_name or op_name.endswith("/optimizer"):
        return "optimizer + EMA"
    if "/noise/" in op_name:
        return "noise generation"
    if opcode in ("all-reduce", "all-gather", "reduce-scatter", "collective-permute"):
        return "cross-device mean (and waiting for the other devices)"
    if opcode == "convolution":
        if not backward and "jvp(" in op_name:
            return "conv forward"
        if tuple(sorted(shape)) in kernel_shapes:
            return "conv backward: weight gradient"
        return "conv backward: input gradient"
    if "Attention" in op_name:
        return f"attention {side}"
    if re.search(r"(GroupNorm|LayerNorm|silu|swish|gelu|logistic)", op_name):
        return f"normalisation + activation {side}"
    if "Dense" in op_name or opcode == "dot":
        return f"dense {side}"
    if "jvp(" in op_name:
        return f"other model ops {side}"
    return "other (loss, reductions, copies)"


def _hlo_op_times(trace_dir: str, module: str) -> dict[str, float]:
    """Seconds per hlo_op of `module` in the trace, summed over events (device planes if there are any)."""
    from jax.profiler import ProfileData
    totals: dict[str, dict[str, float]] = {"device": collections.Counter(), "host": collections.Counter()}
    for path in glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True):
        for plane in ProfileData.from_file(path).planes:
            where = "device" if plane.name.startswith("/device:") else "host"
            for line in plane.lines:
                for event in line.events:
                    stats = dict(event.stats)
                    if "hlo_op" in stats and str(stats.get("hlo_module", "")).startswith(module):
                        totals[where][stats["hlo_op"]] += event.duration_ns / 1e9
    return dict(totals["device"] or totals["host"])


def profile(compiled: Any, args: tuple, *, num_calls: int, num_devices: int,
            carry: Optional[Callable] = None) -> dict:
    """Runs `compiled(*args)` `num_calls` times under the profiler (after one untraced call).

    `carry(args, outputs) -> args` builds the next call's arguments (a train step: the new state, the next batch).
    Returns {'wall_s': seconds per call, 'kinds': {kind: op seconds per call, summed over devices}, 'ops': {hlo op:
    seconds per call}, 'devices': num_devices}."""
    carry = carry or (lambda a, out: a)
    text = compiled.as_text()
    module = re.search(r"HloModule (\S+?)[,\s]", text).group(1)
    instructions, kernels = parse_hlo(text)
    args = carry(args, jax.block_until_ready(compiled(*args)))
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        start = time.perf_counter()
        for _ in range(num_calls):
            args = carry(args, compiled(*args))
        jax.block_until_ready(args)
        wall = (time.perf_counter() - start) / num_calls
        jax.profiler.stop_trace()
        ops = {op: s / num_calls for op, s in _hlo_op_times(trace_dir, module).items()}
    kinds: dict[str, float] = collections.Counter()
    for op, seconds in ops.items():
        opcode, op_name, shape = instructions.get(op, ("?", "", ()))
        kinds[op_kind(opcode, op_name, shape, kernels)] += seconds
    return {"wall_s": wall, "kinds": dict(kinds), "ops": ops, "devices": num_devices}


def format_profile(result: dict) -> str:
    """The profile as a Markdown table: per kind, ms per step per device and share of the op time."""
    devices, wall = result["devices"], result["wall_s"]
    total = sum(result["kinds"].values())
    rows = ["| what | ms per step (per device) | share of op time |", "|---|---|---|"]
    for kind, seconds in sorted(result["kinds"].items(), key=lambda kv: -kv[1]):
        rows.append(f"| {kind} | {1e3 * seconds / devices:.2f} | {seconds / total:.1%} |")
    busy = total / devices
    rows.append(f"| **all XLA ops** | **{1e3 * busy:.2f}** | 100 % |")
    rows.append(f"| wall time per step (ops + host + waits; {devices} device(s) in parallel) | {1e3 * wall:.2f} | "
                f"ops busy {busy / wall:.0%} of it |")
    return "\n".join(rows)
