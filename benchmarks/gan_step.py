"""GAN train-step throughput: DCGAN (D+G step) and SRGAN, against PyTorch eager.

    python benchmarks/gan_step.py [--steps 10] [--json results.json] [--no-torch]

Prints a Markdown table of images/s (median over ``--steps`` timed steps after
warm-up) and compile time (first call, which includes one step) for

* DCGAN, Radford et al. at 64², 1 channel, nz=100, ngf=ndf=64, batch 64, one D
  update (real and fake batches) + one G update, Adam(2e-4, β1=0.5);
  with the backend policy's ops (sub-pixel transposed convs) and with
  ``nn.ConvTranspose`` (``Ops.sub_pixel=False``);
* PyTorch eager DCGAN (the PyTorch example's G and D, same sizes, same step), timed
  alternately with the JAX step so both see the same machine load;
* SRGAN ×2 (64² -> 128², batch 16): the SRResNet MSE pre-training step and the SRGAN
  step (feature-matching content + 1e-3 adversarial).

Results per machine: ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp

from jaxthyroid.models import backend, dcgan, srgan
from jaxthyroid.train import gan_steps

DCGAN_BATCH = 64


def _block(x):
    return jax.block_until_ready(x)


class JaxDCGAN:
    """A DCGAN state + step; ``run()`` does one timed D+G step."""

    def __init__(self, batch: int, sub_pixel: bool):
        self.generator = dcgan.Generator(channels=1, ops=backend.default_ops().replace(sub_pixel=sub_pixel))
        self.discriminator = dcgan.Discriminator()
        key = jax.random.key(0, impl="rbg")
        self.state = _block(gan_steps.create_dcgan_state(self.generator, self.discriminator, key))
        self.step = gan_steps.make_dcgan_step(self.generator, self.discriminator)
        self.batch = {"image": jnp.tanh(jax.random.normal(jax.random.key(1, impl="rbg"), (batch, 64, 64, 1)))}
        self.key = jax.random.key(2, impl="rbg")

    def run(self) -> float:
        t = time.perf_counter()
        self.state, metrics = self.step(self.state, self.batch, self.key)
        _block(metrics)
        return time.perf_counter() - t


class TorchDCGAN:
    """The PyTorch DCGAN example (Radford et al.), eager, same step as ours."""

    def __init__(self, batch: int):
        import torch
        from torch import nn

        self.torch = torch
        nz, ngf, ndf, nc = 100, 64, 64, 1
        self.G = nn.Sequential(
            nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False),
            nn.BatchNorm2d(ngf * 8),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ngf * 4),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ngf * 2),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ngf),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False),
            nn.Tanh(),
        )
        self.D = nn.Sequential(
            nn.Conv2d(nc, ndf, 4, 2, 1, bias=False),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ndf * 2),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ndf * 4),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 4, ndf * 8, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ndf * 8),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False),
        )  # logits; BCEWithLogits below
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.loss = nn.BCEWithLogitsLoss()
        self.real = torch.tanh(torch.randn(batch, nc, 64, 64))
        self.batch, self.nz = batch, nz

    def run(self) -> float:
        torch = self.torch
        t = time.perf_counter()
        ones, zeros = torch.ones(self.batch), torch.zeros(self.batch)
        self.D.zero_grad()
        err_real = self.loss(self.D(self.real).view(-1), ones)
        err_real.backward()
        fake = self.G(torch.randn(self.batch, self.nz, 1, 1))
        err_fake = self.loss(self.D(fake.detach()).view(-1), zeros)
        err_fake.backward()
        self.opt_d.step()
        self.G.zero_grad()
        err_g = self.loss(self.D(fake).view(-1), ones)
        err_g.backward()
        self.opt_g.step()
        return time.perf_counter() - t


class JaxSR:
    """SRResNet pre-training or SRGAN step at ×2, 64² -> 128²."""

    def __init__(self, batch: int, adversarial: bool):
        self.generator = srgan.SRResNetX2(channels=1)
        self.discriminator = srgan.SRDiscriminator()
        key = jax.random.key(0, impl="rbg")
        hr = jnp.tanh(jax.random.normal(jax.random.key(1, impl="rbg"), (batch, 128, 128, 1)))
        self.batch = {"lr": hr.reshape(batch, 64, 2, 64, 2, 1).mean(axis=(2, 4)), "hr": hr}
        if adversarial:
            self.state = gan_steps.create_srgan_state(self.generator, self.discriminator, key, lr_shape=(64, 64, 1))
            self.step = gan_steps.make_srgan_step(self.generator, self.discriminator)
        else:
            self.state = gan_steps.create_state(self.generator, key, gan_steps.srgan_optimizer(), self.batch["lr"][:1])
            self.step = gan_steps.make_srresnet_pretrain_step(self.generator)
        _block(self.state)

    def run(self) -> float:
        t = time.perf_counter()
        self.state, metrics = self.step(self.state, self.batch)
        _block(metrics)
        return time.perf_counter() - t


def measure(runners: dict, *, batch: dict, steps: int, warmup: int) -> dict:
    """Compile (first call) then ``steps`` timed calls of each runner, interleaved."""
    results = {}
    for name, runner in runners.items():
        compile_s = runner.run()
        for _ in range(warmup - 1):
            runner.run()
        results[name] = {"compile_s": compile_s, "times": []}
    for _ in range(steps):
        for name, runner in runners.items():  # alternate, so load noise hits all alike
            results[name]["times"].append(runner.run())
    for name, r in results.items():
        median = statistics.median(r["times"])
        r.update(
            batch=batch[name],
            median_step_s=median,
            images_per_s=batch[name] / median,
            min_step_s=min(r["times"]),
            max_step_s=max(r["times"]),
        )
        print(f"{name}: {r['images_per_s']:.1f} images/s, compile {r['compile_s']:.1f} s", flush=True)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls, the first includes compilation")
    parser.add_argument("--slow-steps", type=int, default=3, help="timed steps for nn.ConvTranspose")
    parser.add_argument("--sr-batch", type=int, default=16)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--no-slow", action="store_true", help="skip nn.ConvTranspose")
    parser.add_argument("--no-sr", action="store_true")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)

    results = {}
    runners = {"dcgan jax sub-pixel": JaxDCGAN(DCGAN_BATCH, sub_pixel=True)}
    batch = {"dcgan jax sub-pixel": DCGAN_BATCH}
    if not args.no_torch:
        try:
            import torch

            torch.manual_seed(0)
            runners["dcgan torch eager"] = TorchDCGAN(DCGAN_BATCH)
            batch["dcgan torch eager"] = DCGAN_BATCH
        except ImportError:
            print("torch not importable: skipping the PyTorch comparison")
    results.update(measure(runners, batch=batch, steps=args.steps, warmup=args.warmup))
    if not args.no_slow:
        results.update(
            measure(
                {"dcgan jax conv_transpose": JaxDCGAN(DCGAN_BATCH, sub_pixel=False)},
                batch={"dcgan jax conv_transpose": DCGAN_BATCH},
                steps=args.slow_steps,
                warmup=1,
            )
        )
    if not args.no_sr:
        sr = {
            "srresnet x2 pretrain": JaxSR(args.sr_batch, adversarial=False),
            "srgan x2 step": JaxSR(args.sr_batch, adversarial=True),
        }
        results.update(measure(sr, batch={k: args.sr_batch for k in sr}, steps=args.steps, warmup=args.warmup))

    print(f"\nDevice: {jax.devices()[0].device_kind} ×{jax.device_count()}, jax {jax.__version__}\n")
    print("| step | batch | images/s | median step (s) | min–max (s) | compile + 1st step (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(
            f"| {name} | {r['batch']} | {r['images_per_s']:.1f} | {r['median_step_s']:.3f} | "
            f"{r['min_step_s']:.3f}–{r['max_step_s']:.3f} | {r['compile_s']:.1f} |"
        )
    if "dcgan torch eager" in results:
        ratio = results["dcgan jax sub-pixel"]["images_per_s"] / results["dcgan torch eager"]["images_per_s"]
        results["jax_over_torch_dcgan"] = ratio
        print(f"\nDCGAN JAX (sub-pixel) / PyTorch eager: {ratio:.2f}×")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
