"""AdaPrune quality and time: the packaged all-MiniLM-L6-v2 (every encoder Linear layer pruned) and a small CNN
trained on the built-in digits.

MiniLM: mean cosine similarity and nearest-neighbour agreement of the pruned sentence embeddings with the dense
ones on held-out sentences, for each pattern x {masks only, AdaPrune} x {magnitude, activation} mask scores.
CNN: test accuracy of the dense model, of masks alone (with and without batch-norm re-estimation) and of
AdaPrune. Time per layer (median, max, and by layer shape) and in total for every run. Settings not given on the
command line are AdaPruneConfig's defaults.

    python benchmarks/bench_adaprune.py --smoke --out DIR       # seconds: one MiniLM block, a tiny CNN
    python benchmarks/bench_adaprune.py                         # full: both models, 256 calibration sentences
    python benchmarks/bench_adaprune.py --skip-cnn --threads 1 --adaprune-only --scores magnitude  # the defaults
    python benchmarks/bench_adaprune.py --skip-cnn --optimizer adam --iterations 300   # the paper's optimiser
    python benchmarks/bench_adaprune.py --skip-minilm --skip-cnn --resnet50   # 53-layer scale check
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, environment, print_environment  # noqa: E402

import nmsparse  # noqa: E402
from nmsparse.adaprune import AdaPruneConfig  # noqa: E402
from nmsparse.recipes.integrations import minilm_available  # noqa: E402


def _batch_size(value: str) -> int | str:
    return "full" if value in ("full", "none") else int(value)


def _timing(reports: Any) -> dict[str, Any]:
    seconds = [r.seconds for r in reports]
    by_shape: dict[str, list[float]] = {}
    for r in reports:
        by_shape.setdefault("x".join(map(str, r.shape)), []).append(r.seconds)
    return {
        "layers": len(seconds),
        "total_s": sum(seconds),
        "per_layer_median_s": statistics.median(seconds) if seconds else 0.0,
        "per_layer_max_s": max(seconds) if seconds else 0.0,
        "per_layer_by_shape_s": {k: statistics.mean(v) for k, v in by_shape.items()},
        "per_layer_s": {r.name: r.seconds for r in reports},
    }


def _config(args: argparse.Namespace, pattern: str, **settings: Any) -> AdaPruneConfig:
    """The defaults, with the fit settings given on the command line, then ``settings``."""
    given = {
        key: getattr(args, key)
        for key in ("optimizer", "iterations", "damping", "lr", "bias_lr")
        if getattr(args, key) is not None
    }
    if args.batch_size is not None:
        given["batch_size"] = None if args.batch_size == "full" else args.batch_size
    return AdaPruneConfig(pattern=pattern, **{**given, **settings})


def bench_minilm(args: argparse.Namespace) -> list[dict[str, Any]]:
    from nmsparse.recipes.integrations.minilm import (
        embedding_agreement,
        encode,
        english_sentences,
        load_minilm,
        tokenize_batches,
    )

    model, tokenizer = load_minilm(device=args.device)
    calibration = tokenize_batches(tokenizer, english_sentences("calibration", limit=args.sentences), batch_size=32)
    held_out = english_sentences("evaluation", limit=args.eval_sentences)
    dense = encode(model, tokenizer, held_out)
    include = ["encoder.layer.1.*"] if args.smoke else ["encoder.*"]
    shown = _config(args, args.patterns[0])
    print(
        f"\nMiniLM: {args.sentences} calibration sentences, {len(held_out)} held-out, layers {include}, "
        f"{shown.optimizer} x {shown.iterations} steps, damping {shown.damping}, batch size "
        f"{shown.batch_size or 'full'}, {torch.get_num_threads()} thread(s)"
    )
    rows = []
    for pattern in args.patterns:
        for scores in args.scores:
            for adaprune in (True,) if args.adaprune_only else (False, True):
                candidate = copy.deepcopy(model)
                extra: dict[str, Any] = {} if adaprune else {"iterations": 0, "absorb_mean": False}
                config = _config(
                    args,
                    pattern,
                    include=include,
                    scores=scores,
                    sequential=not args.parallel,
                    target=args.target,
                    **extra,
                )
                start, cpu = time.perf_counter(), time.process_time()
                reports = nmsparse.adaprune_(candidate, calibration, config, progress=False)
                wall, cpu = time.perf_counter() - start, time.process_time() - cpu
                agreement = embedding_agreement(dense, encode(candidate, tokenizer, held_out))
                row = {
                    "model": "minilm",
                    "pattern": pattern,
                    "scores": scores,
                    "adaprune": adaprune,
                    "config": config.to_dict(),
                    "cpu_s": cpu,
                    "load_after": os.getloadavg(),
                    "mean_cosine": agreement.mean_cosine,
                    "min_cosine": agreement.min_cosine,
                    "nn_agreement": agreement.nn_agreement,
                    "top10_overlap": agreement.top10_overlap,
                    "wall_s": wall,
                    **_timing(reports),
                }
                rows.append(row)
                print(
                    f"  {pattern:6s} {scores:10s} {'adaprune' if adaprune else 'masks only':10s} "
                    f"cos {row['mean_cosine']:.4f}  min {row['min_cosine']:.3f}  nn {row['nn_agreement']:.3f}  "
                    f"top10 {row['top10_overlap']:.3f}  {wall:7.1f} s wall, {cpu:7.1f} s CPU "
                    f"({row['per_layer_median_s']:.2f} s/layer "
                    f"median; by shape: "
                    + ", ".join(f"{k} {v:.2f} s" for k, v in row["per_layer_by_shape_s"].items())
                    + ")",
                    flush=True,
                )
                del candidate
    return rows


def _train_cnn(args: argparse.Namespace) -> tuple[torch.nn.Module, Any]:
    from nmsparse.recipes.classify import Trainer, build_data, load_config

    cfg = load_config(
        None,
        mode="dense",
        model="cnn",
        data="digits",
        epochs=args.cnn_epochs,
        baseline=False,
        device=args.device,
        width=args.cnn_width,
        seed=args.seed,
    )
    data = build_data(cfg)
    trainer = Trainer(cfg, data, progress=False)
    if args.cnn_checkpoint:
        from nmsparse.io import load_state_dict

        nmsparse.load_pruned_state_dict_(trainer.model, load_state_dict(args.cnn_checkpoint))
    else:
        start = time.perf_counter()
        trainer.fit()
        print(f"  trained the dense CNN for {args.cnn_epochs} epochs in {time.perf_counter() - start:.1f} s")
    return trainer.model.eval(), data


def bench_cnn(args: argparse.Namespace) -> list[dict[str, Any]]:
    print(f"\nCNN on the built-in digits: width {args.cnn_width}, {args.cnn_images} calibration images")
    dense, data = _train_cnn(args)
    test_x, test_y = data.test.images.to(args.device), data.test.labels.to(args.device)

    def accuracy(model: torch.nn.Module) -> float:
        with torch.no_grad():
            return 100.0 * float((model.eval()(test_x).argmax(dim=1) == test_y).float().mean())

    generator = torch.Generator().manual_seed(args.seed)
    index = torch.randperm(len(data.train), generator=generator)[: args.cnn_images]
    calibration = list(data.train.images[index].to(args.device).split(64))
    dense_acc = accuracy(dense)
    print(f"  dense: {dense_acc:.2f}% on {len(test_y)} held-out test images")
    variants = {
        "masks only": {"iterations": 0, "absorb_mean": False, "recalibrate_bn": False},
        "masks + BN re-estimation": {"iterations": 0, "absorb_mean": False},
        "AdaPrune (adam, batch 50)": {"optimizer": "adam", "iterations": args.iterations or 1000, "batch_size": 50},
        "AdaPrune (default)": {},
    }
    rows = []
    for pattern in args.cnn_patterns:
        for name, kwargs in variants.items():
            candidate = copy.deepcopy(dense)
            start = time.perf_counter()
            reports = nmsparse.adaprune_(
                candidate, calibration, AdaPruneConfig(pattern=pattern, **kwargs), progress=False
            )
            wall = time.perf_counter() - start
            acc = accuracy(candidate)
            row = {
                "model": "cnn-digits",
                "pattern": pattern,
                "variant": name,
                "dense_accuracy": dense_acc,
                "accuracy": acc,
                "drop": dense_acc - acc,
                "pruned_layers": [r.name for r in reports],
                "wall_s": wall,
                **_timing(reports),
            }
            rows.append(row)
            print(
                f"  {pattern:6s} {name:26s} {acc:6.2f}%  (drop {dense_acc - acc:+.2f})  {wall:6.1f} s  "
                f"layers {row['pruned_layers']}",
                flush=True,
            )
    return rows


def bench_resnet50(args: argparse.Namespace) -> dict[str, Any]:
    """Scale check: every fitting conv of a randomly initialised ResNet-50 (53 layers), peak memory and time."""
    import resource

    from nmsparse.recipes.classify import build_model

    torch.manual_seed(args.seed)
    model = build_model("resnet50", in_channels=3, num_classes=1000, image_size=args.resnet_size).to(args.device)
    generator = torch.Generator().manual_seed(args.seed)
    calibration = [
        torch.randn(8, 3, args.resnet_size, args.resnet_size, generator=generator).to(args.device)
        for _ in range(args.resnet_images // 8)
    ]
    start = time.perf_counter()
    config = _config(args, args.resnet_pattern, iterations=args.resnet_iterations, keep_first_last=True)
    reports = nmsparse.adaprune_(model.eval(), calibration, config, progress=False)
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row = {
        "model": "resnet50-random",
        "pattern": args.resnet_pattern,
        "images": len(calibration) * 8,
        "image_size": args.resnet_size,
        "iterations": args.resnet_iterations,
        "wall_s": wall,
        "peak_rss_mib": peak,
        "all_errors_down": all(r.error_after <= r.error_before for r in reports),
        **_timing(reports),
    }
    print(
        f"\nResNet-50 (random weights, {row['images']} images {args.resnet_size}x{args.resnet_size}, "
        f"{args.resnet_pattern}, {args.resnet_iterations} steps): {row['layers']} layers in {wall:.1f} s, "
        f"{row['per_layer_median_s']:.2f} s/layer median, peak RSS {peak:.0f} MiB (process)",
        flush=True,
    )
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="seconds: one MiniLM block, a tiny CNN, few steps")
    parser.add_argument("--patterns", nargs="+", default=["2:4", "2:4-T", "4:8-T"])
    parser.add_argument("--scores", nargs="+", default=["magnitude", "activation"])
    parser.add_argument("--sentences", type=int, default=256, help="calibration sentences")
    parser.add_argument("--eval-sentences", type=int, default=300, help="held-out sentences")
    parser.add_argument("--optimizer", choices=("cg", "adam"), default=None, help="default: AdaPruneConfig's")
    parser.add_argument("--iterations", type=int, default=None, help="default: AdaPruneConfig's")
    parser.add_argument("--damping", type=float, default=None, help="cg: default AdaPruneConfig's")
    parser.add_argument("--lr", type=float, default=None, help="adam: default AdaPruneConfig's")
    parser.add_argument("--bias-lr", type=float, default=None, help="adam: default AdaPruneConfig's")
    parser.add_argument(
        "--batch-size", type=_batch_size, default=None, help="adam: integer or 'full' (default: AdaPruneConfig's)"
    )
    parser.add_argument("--parallel", action="store_true", help="the paper's parallel version")
    parser.add_argument("--adaprune-only", action="store_true", help="MiniLM: skip the masks-only runs")
    parser.add_argument("--target", default="model", choices=("model", "layer"))
    parser.add_argument("--cnn-patterns", nargs="+", default=["2:4-T"])
    parser.add_argument("--cnn-epochs", type=int, default=30)
    parser.add_argument("--cnn-width", type=int, default=32)
    parser.add_argument("--cnn-images", type=int, default=256, help="calibration images")
    parser.add_argument("--cnn-checkpoint", default=None, help="dense CNN weights instead of training one")
    parser.add_argument("--resnet50", action="store_true", help="also the ResNet-50 scale check")
    parser.add_argument("--resnet-size", type=int, default=64, help="ResNet-50 image side")
    parser.add_argument("--resnet-images", type=int, default=16)
    parser.add_argument("--resnet-iterations", type=int, default=20)
    parser.add_argument("--resnet-pattern", default="2:4")
    parser.add_argument("--skip-minilm", action="store_true")
    parser.add_argument("--skip-cnn", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default=None, help="result file name (default from the settings)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the result file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    if args.smoke:
        args.patterns, args.scores = args.patterns[:1], args.scores[:1]
        args.sentences, args.eval_sentences, args.iterations = 16, 16, 5
        args.cnn_patterns, args.cnn_epochs, args.cnn_width, args.cnn_images = args.cnn_patterns[:1], 1, 8, 64
    env = environment(args.device)
    print_environment(env)
    print(f"load average at start: {load}")
    results: dict[str, Any] = {"environment": env, "settings": vars(args).copy(), "load_at_start": load}
    if not args.skip_minilm:
        if minilm_available():
            results["minilm"] = bench_minilm(args)
        else:
            print("MiniLM skipped: pip install 'nmsparse[minilm]'")
    if not args.skip_cnn:
        results["cnn"] = bench_cnn(args)
    if args.resnet50:
        results["resnet50"] = bench_resnet50(args)
    results["load_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"load average at end: {results['load_at_end']}")
    name = args.name or ("bench_adaprune_smoke" if args.smoke else f"bench_adaprune_{args.device}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{name}.json"
    path.write_text(json.dumps(json.loads(json.dumps(results, default=str)), indent=2) + "\n")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
