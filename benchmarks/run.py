"""The benchmark suite: one command for compile time, step time, FLOP/s and memory.

    python -m benchmarks.run                         # full suite (CPU: ~30 min)
    python -m benchmarks.run --quick --only phantom,resnet_tiny --json out.json
    python -m benchmarks.run --only resnet18,dcgan --dtypes fp32 --devices 1
    jaxthyroid bench --quick                          # the CLI forwards here

For each case (``resnet_tiny``, ``resnet18``, ``resnet50``: classifier train step;
``dcgan``: D+G step; ``srgan``: SRGAN ×2 step; ``phantom``: one simulator batch
from :mod:`jaxthyroid.data.device_stream`), each dtype (fp32; bf16 = bf16 compute,
fp32 parameters) and each device count it measures

* compile time (``lower + compile``; the persistent compilation cache is off unless
  ``--compile-cache``),
* steady-state step time: median over ``--steps`` (≥ 20 by default) calls after
  warm-up, each blocked with ``block_until_ready``, and images/s,
* FLOPs per step from XLA's ``cost_analysis()`` (per-device module × devices),
  achieved FLOP/s, and their share of this machine's fp32 matmul rate (4096², measured
  at the start of the same run),
* peak memory from ``memory_analysis()`` (per device).

N devices: the accelerator's own devices, or on CPU ``N`` host devices
(``--xla_force_host_platform_device_count``) in a subprocess. When ``torch`` imports,
ResNet-18 and DCGAN are also timed in PyTorch eager (NCHW and channels-last),
alternating with the JAX step (A/B/A/B…), and the ratios printed. PyTorch is never a
dependency of the package.

Output: a Markdown table on stdout (and ``--markdown PATH``) and JSON (``--json PATH``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

FINDINGS = 6  # logits of the classifier (jaxthyroid.findings.DEFAULT)
DTYPES = ("fp32", "bf16")


@dataclasses.dataclass(frozen=True)
class Case:
    """A benchmark: its family and the default (CPU-sized) batch and image side."""

    family: str  # 'classifier' | 'dcgan' | 'srgan' | 'phantom'
    batch: int
    size: int
    torch: bool = False  # a PyTorch reference exists (train_step.py / gan_step.py)


CASES: dict[str, Case] = {
    "phantom": Case("phantom", batch=64, size=128),
    "resnet_tiny": Case("classifier", batch=8, size=64),
    "resnet18": Case("classifier", batch=32, size=128, torch=True),
    "resnet50": Case("classifier", batch=8, size=128),
    "dcgan": Case("dcgan", batch=64, size=64, torch=True),
    "srgan": Case("srgan", batch=4, size=128),
}
# Those with PyTorch references first: on a shared machine the ratios matter most.
DEFAULT_CASES = ("resnet18", "dcgan", "phantom", "resnet50", "srgan")
QUICK_CASES = ("phantom", "resnet_tiny")
QUICK_SIZES = {"phantom": (8, 64), "resnet_tiny": (8, 64)}  # (batch, size) under --quick


@dataclasses.dataclass(frozen=True)
class Spec:
    """One measured configuration."""

    case: str
    dtype: str = "fp32"
    devices: int = 1
    batch: int | None = None  # None: the case's default
    size: int | None = None

    def resolved(self) -> Spec:
        c = CASES[self.case]
        return dataclasses.replace(self, batch=self.batch or c.batch, size=self.size or c.size)


# -- the JAX runners ------------------------------------------------------------------


def _jnp_dtype(name: str):
    import jax.numpy as jnp

    return {"fp32": jnp.float32, "bf16": jnp.bfloat16}[name]


def _mesh(devices: int):
    from jaxthyroid import parallel

    return None if devices == 1 else parallel.make_mesh(devices)


def _replicate(tree, mesh):
    import jax

    from jaxthyroid import parallel

    return tree if mesh is None else jax.device_put(tree, parallel.replicated(mesh))


def _shard(batch, mesh):
    from jaxthyroid import parallel

    return batch if mesh is None else parallel.shard_batch(batch, mesh)


class _Stateful:
    """``compiled(state, *args) -> (state, metrics)`` as a zero-argument step."""

    def __init__(self, compiled, state, *args):
        self.compiled, self.state, self.args = compiled, state, args

    def __call__(self):
        self.state, metrics = self.compiled(self.state, *self.args)
        return self.state, metrics


def _phantom_runner(spec: Spec, mesh, data: dict):
    """A device_stream batch generator (simulate + normalise), one new batch per call."""
    import jax
    import jax.numpy as jnp

    from benchmarks.common import compile_jitted
    from jaxthyroid.data import device_stream

    if spec.dtype != "fp32":
        raise ValueError("the phantom simulator runs in fp32 only")
    key = jax.random.key(0)
    stream = device_stream.train_batches(key, batch_size=spec.batch, size=spec.size, mesh=mesh)
    # The stream's jitted generator (private attribute; a public accessor in
    # device_stream would be cleaner): compiled here to time compilation and read its
    # cost and memory analysis.
    generate = stream._generate
    cross = jnp.float32(stream.cross_fraction)
    compiled, info = compile_jitted(generate, key, jnp.uint32(0), cross)
    data[(spec.batch, spec.size, spec.devices)] = compiled(key, jnp.uint32(0), cross)
    counter = iter(range(1, 1 << 31))
    steps = [jnp.uint32(i) for i in range(1, 64)]

    def step():
        i = next(counter)
        return compiled(key, steps[i % len(steps)], cross)

    return step, info


def _classifier_batch(spec: Spec, mesh, data: dict) -> dict:
    """Phantom images when this run generated a batch of this shape, else uniform noise
    (the step's cost does not depend on pixel values); labels multi-hot."""
    import jax

    batch = data.get((spec.batch, spec.size, spec.devices))
    if batch is not None:
        return {"image": batch["image"], "findings": batch["findings"]}
    k_image, k_labels = jax.random.split(jax.random.key(3))
    return _shard(
        {
            "image": jax.random.uniform(k_image, (spec.batch, spec.size, spec.size, 1)),
            "findings": (jax.random.uniform(k_labels, (spec.batch, FINDINGS)) < 0.3).astype("float32"),
        },
        mesh,
    )


def _classifier_runner(spec: Spec, mesh, data: dict):
    """SGD-momentum train step of ``get_model(spec.case)`` (the backend policy's ops)."""
    import jax
    import optax

    from benchmarks.common import compile_jitted
    from jaxthyroid.models.registry import get_model
    from jaxthyroid.train.state import create_train_state
    from jaxthyroid.train.steps import make_classifier_steps

    dtype = _jnp_dtype(spec.dtype)
    model = get_model(spec.case, num_classes=FINDINGS, dtype=dtype)
    tx = optax.sgd(0.01, momentum=0.9)
    # 'rbg' keys: XLA:CPU compiles threefry init of every parameter slowly; init is not timed.
    state = create_train_state(jax.random.key(0, impl="rbg"), model, tx, (1, spec.size, spec.size, 1), mesh=mesh)
    train_step, _ = make_classifier_steps(
        model, mesh, donate=True, compute_dtype=None if spec.dtype == "fp32" else dtype
    )
    batch = _classifier_batch(spec, mesh, data)
    key = jax.random.key(1, impl="rbg")
    compiled, info = compile_jitted(train_step, state, batch, key)
    return _Stateful(compiled, state, batch, key), info


def _dcgan_runner(spec: Spec, mesh, data: dict):
    """DCGAN D+G step (Radford sizes, 1 channel, the backend policy's ops)."""
    import jax
    import jax.numpy as jnp

    from benchmarks.common import compile_jitted
    from jaxthyroid import xla_options
    from jaxthyroid.models import dcgan
    from jaxthyroid.train import gan_steps

    dtype = None if spec.dtype == "fp32" else _jnp_dtype(spec.dtype)
    G = dcgan.Generator(channels=1, image_size=spec.size, dtype=dtype)
    D = dcgan.Discriminator(image_size=spec.size, dtype=dtype)
    state = _replicate(gan_steps.create_dcgan_state(G, D, jax.random.key(0, impl="rbg")), mesh)
    # The step is a Python function around a jitted shard_map; jit the whole of it
    # (z sampling included) so it can be lowered and analysed as one program.
    step = xla_options.jit(gan_steps.make_dcgan_step(G, D, mesh), donate_argnums=(0,))
    batch = _shard(
        {"image": jnp.tanh(jax.random.normal(jax.random.key(1), (spec.batch, spec.size, spec.size, 1)))}, mesh
    )
    key = jax.random.key(2, impl="rbg")
    compiled, info = compile_jitted(step, state, batch, key)
    return _Stateful(compiled, state, batch, key), info


def _srgan_runner(spec: Spec, mesh, data: dict):
    """SRGAN ×2 step (feature-matching content + 1e-3 adversarial); ``size`` is the HR side."""
    import jax
    import jax.numpy as jnp

    from benchmarks.common import compile_jitted
    from jaxthyroid import xla_options
    from jaxthyroid.models import srgan
    from jaxthyroid.train import gan_steps

    dtype = None if spec.dtype == "fp32" else _jnp_dtype(spec.dtype)
    G = srgan.SRResNetX2(channels=1, dtype=dtype)
    D = srgan.SRDiscriminator(dtype=dtype)
    lr_side = spec.size // 2
    state = _replicate(
        gan_steps.create_srgan_state(G, D, jax.random.key(0, impl="rbg"), lr_shape=(lr_side, lr_side, 1)), mesh
    )
    hr = jnp.tanh(jax.random.normal(jax.random.key(1), (spec.batch, spec.size, spec.size, 1)))
    batch = _shard({"lr": hr.reshape(spec.batch, lr_side, 2, lr_side, 2, 1).mean(axis=(2, 4)), "hr": hr}, mesh)
    step = xla_options.jit(gan_steps.make_srgan_step(G, D, mesh), donate_argnums=(0,))
    compiled, info = compile_jitted(step, state, batch)
    return _Stateful(compiled, state, batch), info


_RUNNERS = {
    "phantom": _phantom_runner,
    "classifier": _classifier_runner,
    "dcgan": _dcgan_runner,
    "srgan": _srgan_runner,
}


# -- the PyTorch references ------------------------------------------------------------


def torch_runners(spec: Spec) -> dict[str, Callable[[], Any]]:
    """PyTorch eager references of ``spec`` (1 device), ``{}`` when none or no torch.

    Reused from ``train_step.py`` (torchvision-style ResNet-18/34, NCHW and
    channels-last; bf16: under ``torch.autocast(bfloat16)``, PyTorch's mixed precision,
    the counterpart of our bf16 compute with fp32 parameters) and ``gan_step.py`` (the
    PyTorch DCGAN example, 64² only, fp32).
    """
    if spec.devices != 1 or not CASES[spec.case].torch:
        return {}
    if spec.dtype != "fp32" and spec.case != "resnet18":
        return {}
    try:
        import torch  # noqa: F401
    except ImportError:
        return {}
    if spec.case == "resnet18":
        from benchmarks import train_step

        args = argparse.Namespace(
            model=spec.case,
            cross=False,
            batch=spec.batch,
            size=spec.size,
            channels=1,
            classes=FINDINGS,
            dtype=spec.dtype,
        )
        runners = train_step._torch_runners(args)
        return {
            "PyTorch eager" if "NCHW" in name else "PyTorch eager channels-last": r.run for name, r in runners.items()
        }
    if spec.case == "dcgan" and spec.size == 64:
        from benchmarks import gan_step

        return {"PyTorch eager": gan_step.TorchDCGAN(spec.batch).run}
    return {}


# -- measuring ---------------------------------------------------------------------------


def measure(
    spec: Spec, *, steps: int, warmup: int, data: dict, torch: bool = False, log: Callable[[str], None] = print
) -> list[dict]:
    """Rows for one configuration: the JAX step, then any PyTorch references (timed A/B)."""
    from benchmarks.common import summarize, time_alternating

    spec = spec.resolved()
    if spec.batch % spec.devices:
        raise ValueError(f"{spec.case}: batch {spec.batch} does not split over {spec.devices} devices")
    mesh = _mesh(spec.devices)
    step, info = _RUNNERS[CASES[spec.case].family](spec, mesh, data)
    log(
        f"# {spec.case} {spec.dtype} ×{spec.devices} batch {spec.batch} {spec.size}²: "
        f"compiled in {info['compile_s']:.1f} s"
    )
    runners = {"JAX": step}
    if torch:
        runners.update(torch_runners(spec))
    times = time_alternating(runners, steps=steps, warmup=warmup)
    flops = info["flops"] * spec.devices if info["flops"] is not None else None
    rows = []
    for impl, t in times.items():
        stats = summarize(t)
        row = {
            "case": spec.case,
            "impl": impl,
            "dtype": spec.dtype,
            "devices": spec.devices,
            "batch": spec.batch,
            "size": spec.size,
            "compile_s": info["compile_s"] if impl == "JAX" else None,
            **stats,
            "images_per_s": spec.batch / stats["step_ms"] * 1e3,
            # Torch rows use XLA's count of the same network (same work per step).
            "gflop_per_step": flops / 1e9 if flops else None,
            "peak_mb": info["peak_bytes"] / 2**20 if impl == "JAX" and info["peak_bytes"] else None,
        }
        row["gflops"] = row["gflop_per_step"] / stats["step_ms"] * 1e3 if flops else None
        rows.append(row)
        log(f"#   {impl}: {stats['step_ms']:.1f} ms/step, {row['images_per_s']:.1f} images/s")
    ref = next((r for r in rows if r["impl"] == "PyTorch eager"), None)
    if ref is not None:
        for row in rows:
            row["vs_torch_eager"] = row["images_per_s"] / ref["images_per_s"]
    return rows


def run_specs(
    specs: Sequence[Spec],
    *,
    steps: int,
    warmup: int,
    torch: bool,
    log: Callable[[str], None] = print,
    on_rows: Callable[[list[dict]], None] | None = None,
) -> list[dict]:
    """Measures ``specs`` in this process (their device counts must be visible);
    ``on_rows`` gets the rows so far after each configuration (partial results)."""
    data: dict = {}  # phantom batches, reused as classifier inputs of the same shape
    rows = []
    for spec in specs:
        rows.extend(measure(spec, steps=steps, warmup=warmup, data=data, torch=torch, log=log))
        if on_rows is not None:
            on_rows(rows)
    return rows


def environment() -> dict:
    """Date, machine, software versions and load: what a reader needs to trust a figure."""
    import jax

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    env = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "jax": jax.__version__,
        "python": platform.python_version(),
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "device_count": jax.device_count(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "loadavg_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    try:
        import flax

        env["flax"] = flax.__version__
    except ImportError:
        pass
    if "torch" in sys.modules:
        env["torch"] = sys.modules["torch"].__version__
    return env


def add_shares(rows: list[dict], ceiling_gflops: float | None) -> None:
    """``matmul_pct`` = 100 × achieved FLOP/s / the measured fp32 matmul rate."""
    for row in rows:
        row["matmul_pct"] = 100 * row["gflops"] / ceiling_gflops if row.get("gflops") and ceiling_gflops else None


COLUMNS = [
    ("case", "case"),
    ("impl", "impl"),
    ("dtype", "dtype"),
    ("devices", "dev"),
    ("batch", "batch"),
    ("size", "size"),
    ("compile_s", "compile s"),
    ("step_ms", "step ms (median)"),
    ("images_per_s", "images/s"),
    ("gflop_per_step", "GFLOP/step"),
    ("gflops", "GFLOP/s"),
    ("matmul_pct", "% of fp32 matmul"),
    ("peak_mb", "peak MiB"),
    ("vs_torch_eager", "÷ torch eager"),
]


def ratios(rows: Sequence[dict]) -> dict:
    """``{case: {'jax_over_torch_eager', 'jax_over_torch_channels_last', 'jax_over_torch_best',
    'torch_best'}}`` (images/s ratios, 1 device); the key is the case for fp32 and
    ``"<case> <dtype>"`` for other dtypes. ``torch_best`` names PyTorch's fastest mode."""
    out: dict = {}
    for case, dtype in sorted({(r["case"], r["dtype"]) for r in rows}):
        by = {r["impl"]: r for r in rows if r["case"] == case and r["devices"] == 1 and r["dtype"] == dtype}
        if "JAX" in by and "PyTorch eager" in by:
            jax_rate = by["JAX"]["images_per_s"]
            r = out[case if dtype == "fp32" else f"{case} {dtype}"] = {
                "jax_over_torch_eager": jax_rate / by["PyTorch eager"]["images_per_s"]
            }
            if "PyTorch eager channels-last" in by:
                r["jax_over_torch_channels_last"] = jax_rate / by["PyTorch eager channels-last"]["images_per_s"]
            best = max((name for name in by if name.startswith("PyTorch")), key=lambda n: by[n]["images_per_s"])
            r["torch_best"], r["jax_over_torch_best"] = best, jax_rate / by[best]["images_per_s"]
    return out


def render_markdown(result: dict) -> str:
    """The result as Markdown: set-up line, ceiling, table, PyTorch ratios."""
    from benchmarks.common import markdown_table

    env, ceiling = result["environment"], result.get("matmul_ceiling")
    lines = [
        f"Benchmarks {env['date']}: jax {env['jax']} on {env['backend']} "
        f"({env['device_kind']}; {env['cpu']}, {env['cpu_count']} cores), "
        f"median of {result['steps']} steps after {result['warmup']} warm-up; "
        f"load average {env.get('loadavg_start')} → {env.get('loadavg_end')}.",
        "",
    ]
    if ceiling:
        lines += [
            f"Measured fp32 matmul ceiling ({ceiling['n']}², XLA, one device): "
            f"{ceiling['gflops']:.0f} GFLOP/s (best {ceiling['gflops_best']:.0f}).",
            "",
        ]
    lines.append(markdown_table(result["rows"], COLUMNS))
    if result.get("ratios"):
        lines += ["", "JAX images/s ÷ PyTorch images/s (1 device, alternating A/B; bf16: torch autocast):", ""]
        for case, r in result["ratios"].items():
            extra = (
                f", ÷ eager channels-last {r['jax_over_torch_channels_last']:.2f}"
                if "jax_over_torch_channels_last" in r
                else ""
            )
            best = f", ÷ best ({r['torch_best']}) **{r['jax_over_torch_best']:.2f}**" if "torch_best" in r else ""
            lines.append(f"- {case}: ÷ eager {r['jax_over_torch_eager']:.2f}{extra}{best}")
    for note in result.get("notes", []):
        lines.append(f"\n{note}")
    return "\n".join(lines) + "\n"


# -- command line ---------------------------------------------------------------------


def _parse(argv):
    ap = argparse.ArgumentParser(prog="benchmarks.run", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick",
        action="store_true",
        help=f"few steps, a subset ({','.join(QUICK_CASES)}), fp32, 1 device, tiny shapes",
    )
    ap.add_argument("--only", default=None, help=f"comma-separated cases of {','.join(CASES)}")
    ap.add_argument("--batch", type=int, default=None, help="batch for every case (default: per case)")
    ap.add_argument("--size", type=int, default=None, help="image side for every case (default: per case)")
    ap.add_argument(
        "--devices",
        default=None,
        help="comma-separated device counts (default: 1 and all devices; on CPU 1 and the core count as host devices)",
    )
    ap.add_argument("--dtypes", default=None, help="comma-separated of fp32,bf16 (default: both)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps, median (default 20; --quick 3)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps (default 2; --quick 1)")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch references")
    ap.add_argument(
        "--compile-cache",
        action="store_true",
        help="keep JAX's persistent compilation cache on (compile times then mean little)",
    )
    ap.add_argument("--json", default=None, help="write the results as JSON here")
    ap.add_argument("--markdown", default=None, help="write the Markdown table here")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.cases = tuple(args.only.split(",")) if args.only else (QUICK_CASES if args.quick else DEFAULT_CASES)
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        ap.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(CASES)}")
    args.dtypes = tuple((args.dtypes or ("fp32" if args.quick else ",".join(DTYPES))).split(","))
    if any(d not in DTYPES for d in args.dtypes):
        ap.error(f"--dtypes takes {','.join(DTYPES)}")
    args.steps = args.steps or (3 if args.quick else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    return args


def _specs(args, devices: int) -> list[Spec]:
    specs = []
    for dtype in args.dtypes:  # every case in fp32 first, then bf16
        for case in args.cases:
            batch, size = QUICK_SIZES.get(case, (None, None)) if args.quick else (None, None)
            batch, size = args.batch or batch, args.size or size
            if case == "phantom" and dtype != "fp32":
                continue  # the simulator is fp32 only
            specs.append(Spec(case, dtype, devices, batch, size))
    return specs


def _disable_persistent_cache():
    import jax

    # The CLI turns the cache on (jaxthyroid.compile_cache); a cache hit is not a compile time.
    jax.config.update("jax_enable_compilation_cache", False)


def _device_counts(args) -> list[int]:
    import jax

    if args.devices:
        return [int(n) for n in args.devices.split(",")]
    if args.quick:
        return [1]
    n = jax.device_count() if jax.default_backend() != "cpu" else (os.cpu_count() or 1)
    return sorted({1, n})


def _run_child(args, devices: int, log) -> list[dict]:
    """The ``devices``-device CPU measurement in a subprocess with that many host devices."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rows.json")
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.run",
            "--child",
            "--devices",
            str(devices),
            "--only",
            ",".join(args.cases),
            "--dtypes",
            ",".join(args.dtypes),
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
            "--json",
            out,
            "--no-torch",
        ]
        cmd += ["--quick"] if args.quick else []
        cmd += ["--batch", str(args.batch)] if args.batch else []
        cmd += ["--size", str(args.size)] if args.size else []
        cmd += ["--compile-cache"] if args.compile_cache else []
        flags = [
            f
            for f in os.environ.get("XLA_FLAGS", "").split()
            if not f.startswith("--xla_force_host_platform_device_count")
        ]
        env = {**os.environ, "XLA_FLAGS": " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])}
        log(f"# {devices} host devices: subprocess {' '.join(cmd[1:])}")
        subprocess.run(cmd, env=env, check=True, stdout=sys.stderr)
        with open(out) as f:
            return json.load(f)["rows"]


def main(argv=None) -> dict:
    args = _parse(argv)
    import jax

    from benchmarks.common import matmul_ceiling

    if args.compile_cache:
        from jaxthyroid import compile_cache

        compile_cache.enable()
    else:
        _disable_persistent_cache()

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    if args.child:
        rows = run_specs(_specs(args, int(args.devices)), steps=args.steps, warmup=args.warmup, torch=False, log=log)
        with open(args.json, "w") as f:
            json.dump({"rows": rows}, f)
        return {"rows": rows}

    env = environment()
    ceiling = matmul_ceiling(1024 if args.quick else 4096, repeats=3 if args.quick else 5)
    log(f"# fp32 matmul {ceiling['n']}²: {ceiling['gflops']:.0f} GFLOP/s")
    rows: list[dict] = []

    def write(done_rows: list[dict], *, partial: bool) -> dict:
        """Writes the JSON/Markdown (after every configuration, so a cut run leaves data)."""
        add_shares(done_rows, ceiling["gflops"])
        env["loadavg_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        if "torch" in sys.modules:
            env["torch"] = sys.modules["torch"].__version__
        result = {
            "environment": env,
            "matmul_ceiling": ceiling,
            "steps": args.steps,
            "warmup": args.warmup,
            "compile_cache": args.compile_cache,
            "partial": partial,
            "command": " ".join(["python -m benchmarks.run", *(argv if argv is not None else sys.argv[1:])]),
            "rows": done_rows,
            "ratios": ratios(done_rows),
            "notes": [
                "FLOPs: XLA cost_analysis of the compiled step (per-device module × "
                "devices); PyTorch rows reuse the JAX count of the same network. Peak "
                "memory: memory_analysis, per device. bf16 = bf16 compute, fp32 "
                "parameters."
            ]
            + (["PARTIAL: the run has not finished."] if partial else []),
        }
        text = render_markdown(result)
        if args.markdown:
            with open(args.markdown, "w") as f:
                f.write(text)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
        result["markdown"] = text
        return result

    for devices in _device_counts(args):
        if devices <= jax.device_count():
            rows += run_specs(
                _specs(args, devices),
                steps=args.steps,
                warmup=args.warmup,
                torch=not args.no_torch and devices == 1,
                log=log,
                on_rows=lambda new, done=rows: write(done + new, partial=True),
            )
        elif jax.default_backend() == "cpu":
            rows += _run_child(args, devices, log)
        else:
            log(f"# skipping {devices} devices: only {jax.device_count()} visible")
    result = write(rows, partial=False)
    print(result.pop("markdown"))
    return result


if __name__ == "__main__":
    main()
