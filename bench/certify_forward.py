"""Cost of one float64 certify forward of KWL-Sandwich-small, per eval-cache variant (issue 20).

    python bench/certify_forward.py [--min-time 2] [--threads 1] [--paths-only]

Loads ../shared/paper-checkpoints/cifar10/KWL-Sandwich-small-gamma2.0 (lipcore.checkpoint.load_model),
takes its float64 copy (lipcore.certify.float64_model, what a certificate runs) and times, in one
process, no-grad forwards of 1 and 16 images under three variants of the reparameterised layers'
eval caches:

- rebuilt:  the real-block form of each circular layer's response rebuilt on every forward and the
            cache checked by value (the code before issue 20; `derived` is bypassed here);
- values:   block forms kept beside the cache, cache checked by value (the default now);
- versions: block forms kept, cache checked by version counters (`check_caches_by_version`).

It prints ms per forward, the speed-up against `rebuilt`, and checks that every variant's logits
are bit-identical to `rebuilt`'s; these variants run the circular layers' real-block product (the
training path, forced here), which the three variants are about.

Then it compares the two float64 no-grad paths of `lipcore.layers.fourier.apply_response` at 1, 16
and 32 images: `real-block` (the product as one real bmm on the 2x2-block form and a 2-D c2r, the
path before issue 20's second step) and `certify` (`_apply_certify`: complex bmm, 1-D inverse
FFTs), alternating the two and keeping each one's fastest round; it prints ms per forward and per
image and the speed-up, and checks that the paths agree, and that the certify path's batched
logits equal its one-image logits, within 1e-12 relative. Then it times a whole `certify_model` call (float64 copy looked
up, forward, certificate) with the float32 source compared by value with its saved copy (the
default) and by version counters (`lipcore.certify.check_source_by_version`, what the certify
processes use), alternating the two and keeping each one's fastest round.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import lipcore.layers.fourier as fourier
from lipcore.certify import float64_model
from lipcore.checkpoint import load_model
from lipcore.layers import check_caches_by_version
from lipcore.layers.reparam import Reparameterized

ROUNDS = 6  # alternations of the two paths (a shared 2-core box: the fastest round is the least disturbed)
KWL = Path(__file__).resolve().parents[1] / "../shared/paper-checkpoints/cifar10/KWL-Sandwich-small-gamma2.0"


def timed(fn: Callable[[], object], min_time: float) -> float:
    fn()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_time or n < 3:
        fn()
        n += 1
    return (time.perf_counter() - start) / n * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--min-time", type=float, default=2.0, help="seconds of forwards per measurement")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a certify process uses 1)")
    ap.add_argument("--paths-only", action="store_true", help="only the real-block/certify comparison")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(KWL).model
    m64 = float64_model(model)
    torch.manual_seed(0)
    xs = {b: torch.rand(b, 3, 32, 32, dtype=torch.float64) for b in (1, 16)}
    print(f"torch threads {args.threads}, load average {os.getloadavg()[0]:.2f}")
    if not args.paths_only:
        with forced_path(False):
            cache_variants(m64, xs, args.min_time)
    certify_paths(m64, args.min_time)
    if not args.paths_only:
        certify_calls(model, xs, args.min_time)


class forced_path:
    """Within the block, `apply_response` takes the certify path where allowed (True) or never."""

    def __init__(self, certify: bool) -> None:
        self.certify, self.saved = certify, fourier._certify_path

    def __enter__(self) -> None:
        if not self.certify:
            fourier._certify_path = lambda m, x: False  # type: ignore[assignment]

    def __exit__(self, *exc: object) -> None:
        fourier._certify_path = self.saved  # type: ignore[assignment]


def cache_variants(m64: torch.nn.Module, xs: dict[int, torch.Tensor], min_time: float) -> None:
    """ms per no-grad forward under the three eval-cache variants (module docstring)."""
    cached = Reparameterized.derived

    def rebuilt(self: Reparameterized, m: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        return fn(m)

    variants = {"rebuilt": (rebuilt, False), "values": (cached, False), "versions": (cached, True)}
    ms: dict[str, dict[int, float]] = {}
    reference: dict[int, torch.Tensor] = {}
    for name, (derived, by_version) in variants.items():
        Reparameterized.derived = derived  # type: ignore[method-assign]
        check_caches_by_version(m64, by_version)
        ms[name] = {}
        with torch.no_grad():
            for b, x in xs.items():
                out = m64(x)
                reference.setdefault(b, out)
                assert torch.equal(out, reference[b]), f"{name}: logits differ from rebuilt's"
                ms[name][b] = timed(lambda: m64(x), min_time)
    Reparameterized.derived = cached  # type: ignore[method-assign]
    print(f"{'variant':10} {'1 image ms':>11} {'x':>6} {'16 images ms':>13} {'x':>6} {'img/s at 16':>12}")
    for name, row in ms.items():
        s1, s16 = ms["rebuilt"][1] / row[1], ms["rebuilt"][16] / row[16]
        print(f"{name:10} {row[1]:11.2f} {s1:6.2f} {row[16]:13.2f} {s16:6.2f} {16e3 / row[16]:12.1f}")
    print("logits bit-identical across variants: yes")


def certify_paths(m64: torch.nn.Module, min_time: float) -> None:
    """ms per no-grad forward, real-block vs certify path, at 1, 16 and 32 images (same process)."""
    torch.manual_seed(1)
    x = torch.rand(32, 3, 32, 32, dtype=torch.float64)
    best: dict[tuple[bool, int], float] = {}
    out: dict[bool, torch.Tensor] = {}
    with torch.no_grad():
        for certify in (False, True):
            with forced_path(certify):
                out[certify] = m64(x)
        single = torch.cat([m64(x[i : i + 1]) for i in range(len(x))])
        for _ in range(ROUNDS):
            for b in (1, 16, 32):
                for certify in (False, True):
                    with forced_path(certify):
                        ms = timed(lambda: m64(x[:b]), min_time / ROUNDS)
                    best[(certify, b)] = min(best.get((certify, b), ms), ms)
    scale = out[False].abs().max()
    paths = float((out[True] - out[False]).abs().max() / scale)
    batch = float((out[True] - single).abs().max() / scale)
    assert paths <= 1e-12 and batch <= 1e-12, (paths, batch)
    print(f"{'images':>6} {'real-block ms':>14} {'/img':>7} {'certify ms':>11} {'/img':>7} {'x':>6}")
    for b in (1, 16, 32):
        old, new = best[(False, b)], best[(True, b)]
        print(f"{b:6d} {old:14.2f} {old / b:7.2f} {new:11.2f} {new / b:7.2f} {old / new:6.2f}")
    print(f"max |certify - real-block| / max |logit| {paths:.1e}; batched vs single {batch:.1e}")


def certify_calls(model: torch.nn.Module, xs: dict[int, torch.Tensor], min_time: float) -> None:
    """ms per certify_model call, the source checked by value or by version (fastest of 3 rounds)."""
    import lipcore.certify as lc

    model.requires_grad_(False)
    best: dict[tuple[str, int], float] = {}
    for _ in range(3):
        for name, by_version in (("by value", False), ("by version", True)):
            lc._F64.pop(model, None)
            (lc._BY_VERSION.add if by_version else lc._BY_VERSION.discard)(model)
            for b, x in xs.items():
                ms = timed(lambda: lc.certify_model(model, x.float()), min_time / 3)
                best[(name, b)] = min(best.get((name, b), ms), ms)
    print(f"{'source checked':15} {'1 image ms':>11} {'16 images ms':>13}")
    for name in ("by value", "by version"):
        print(f"{name:15} {best[(name, 1)]:11.2f} {best[(name, 16)]:13.2f}")


if __name__ == "__main__":
    main()
