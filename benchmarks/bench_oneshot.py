"""One-shot pruning of causal language models: held-out perplexity, time per block and peak memory.

Part 1, quality: the LM recipe's decoder (a transformers GPT-2 folder; by default the recipe's default decoder,
trained dense first into ``<out>/lm-source``), pruned by each method x pattern, held-out perplexity on the
embedded text vs dense. Part 2, scale: a LLaMA-architecture model built from a config with realistic layer shapes
(hidden 2048, MLP 5632, 4 layers, random weights), time and peak memory per block only, against the stated budget.

Peak memory: ``peak_tracked_mb`` is what prune_oneshot_ accounts for (activations, statistics, one solve);
``rss_peak_increase_mb`` is the process's resident-set high-water mark during the call minus its size before
(Linux ``VmHWM``, reset through ``/proc/self/clear_refs``), so it also counts the block's forward activations
and allocator slack.

    python benchmarks/bench_oneshot.py --smoke --out DIR           # seconds: a tiny GPT-2 and a tiny LLaMA
    python benchmarks/bench_oneshot.py --model runs/lm             # part 1 on a trained LM run (or hf:FOLDER)
    python benchmarks/bench_oneshot.py --skip-lm --llama-budget-mb 1024   # part 2 only
"""

from __future__ import annotations

import argparse
import copy
import functools
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, add_out_argument, environment, print_environment, write_result  # noqa: E402

from nmsparse.hf import calibration_windows, load_causal_lm, perplexity  # noqa: E402
from nmsparse.oneshot import METHODS, OneShotConfig, prune_oneshot_  # noqa: E402

PATTERNS = ("2:4", "4:8", "2:4-T", "4:8-T", "8:16-T")


# ------------------------------------------------------------------------------------------ memory


def _status_kib(field: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else None


def _reset_peak() -> bool:
    """Reset the resident-set high-water mark to the current size (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _measured(fn: Any) -> tuple[Any, float | None, float]:
    """``(result, peak RSS increase in MiB or None, seconds)`` of ``fn()``."""
    before = _status_kib("VmRSS")
    ok = _reset_peak()
    began = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - began
    peak = _status_kib("VmHWM")
    increase = (peak - before) / 1024 if ok and peak is not None and before is not None else None
    return result, increase, seconds


# ------------------------------------------------------------------------------------------ part 1


def _lm_source(args: argparse.Namespace, out_dir: Path) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, str]:
    """The model, train and held-out token streams, and a description."""
    if args.smoke:
        import transformers

        torch.manual_seed(0)
        config = transformers.GPT2Config(
            n_embd=64, n_layer=2, n_head=2, vocab_size=256, n_positions=64, bos_token_id=0, eos_token_id=0
        )
        model = transformers.GPT2LMHeadModel(config).eval()
        generator = torch.Generator().manual_seed(0)
        stream = torch.randint(0, 256, (20000,), generator=generator)
        return model, stream[:16000], stream[16000:], "tiny random GPT-2 (smoke; random tokens)"
    from nmsparse.cli.oneshot import _resolve_folder, _streams, _texts_tokenizer

    if args.model is None:
        from nmsparse.recipes.lm import LMTrainConfig, run_lm_training

        run_dir = out_dir / "lm-source"
        print(f"training the LM recipe's default decoder dense into {run_dir}")
        run_lm_training(
            LMTrainConfig(pattern="dense", baseline=False),
            run_dir,
            resume=(run_dir / "summary.json").exists(),
            progress=False,
        )
        folder = _resolve_folder(str(run_dir))
    else:
        folder = _resolve_folder(args.model)
    model = load_causal_lm(folder)
    tokenizer = _texts_tokenizer(folder, int(model.config.vocab_size))
    train, heldout, _ = _streams(tokenizer)
    return model, train, heldout, str(folder)


def _lm_part(args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    model, train, heldout, source = _lm_source(args, out_dir)
    limit = int(getattr(model.config, "n_positions", 0) or getattr(model.config, "max_position_embeddings", 128))
    context = min(args.context, limit)
    calibration = calibration_windows(train, samples=args.calibration_samples, context=context, seed=0)
    evaluation = heldout[: args.eval_tokens]
    dense = perplexity(model, evaluation, context=context)
    print(
        f"\npart 1: {source}; context {context}, {args.calibration_samples} calibration windows, "
        f"{evaluation.numel()} held-out tokens; dense perplexity {dense:.3f}"
    )
    rows = []
    methods = args.methods or list(METHODS)
    patterns = args.patterns or list(PATTERNS)
    header = (
        f"{'method':<10} {'pattern':<7} {'ppl':>9} {'vs dense':>9} {'s/block':>8} {'tracked MiB':>11} "
        f"{'RSS+ MiB':>9} {'rel.err':>8}"
    )
    print(header)
    for method in methods:
        for pattern in patterns:
            pruned = copy.deepcopy(model)
            config = OneShotConfig(memory_budget=str(int(args.budget_mb * 2**20)))
            report, rss, seconds = _measured(
                functools.partial(
                    prune_oneshot_, pruned, calibration, pattern, algorithm=method, config=config, progress=False
                )
            )
            ppl = perplexity(pruned, evaluation, context=context)
            row = {
                "method": method,
                "pattern": pattern,
                "perplexity": ppl,
                "increase_pct": 100 * (ppl / dense - 1),
                "seconds": seconds,
                "block_seconds_mean": statistics.mean(report.block_seconds),
                "peak_tracked_mb": report.peak_tracked_mb,
                "memory_estimate_mb": report.memory_estimate_mb,
                "rss_peak_increase_mb": rss,
                "mean_relative_error": report.mean_relative_error,
                "layers": len(report.layers),
            }
            rows.append(row)
            print(
                f"{method:<10} {pattern:<7} {ppl:>9.3f} {row['increase_pct']:>+8.1f}% "
                f"{row['block_seconds_mean']:>8.2f} {report.peak_tracked_mb:>11.1f} "
                f"{'-' if rss is None else f'{rss:.0f}':>9} {report.mean_relative_error:>8.4f}"
            )
            del pruned
    by = {(r["method"], r["pattern"]): r for r in rows}
    checks: dict[str, Any] = {}
    if ("sparsegpt", "2:4") in by and ("magnitude", "2:4") in by:
        s, m = by[("sparsegpt", "2:4")]["perplexity"] - dense, by[("magnitude", "2:4")]["perplexity"] - dense
        checks["sparsegpt_2:4_increase_over_magnitude_increase"] = s / m if m > 0 else None
    if ("sparsegpt", "4:8-T") in by and ("sparsegpt", "4:8") in by:
        checks["sparsegpt_4:8-T_over_4:8_perplexity"] = (
            by[("sparsegpt", "4:8-T")]["perplexity"] / by[("sparsegpt", "4:8")]["perplexity"]
        )
    for key, value in checks.items():
        print(f"  {key}: {'-' if value is None else f'{value:.3f}'}")
    return {
        "source": source,
        "context": context,
        "calibration_samples": args.calibration_samples,
        "eval_tokens": int(evaluation.numel()),
        "dense_perplexity": dense,
        "runs": rows,
        "checks": checks,
    }


# ------------------------------------------------------------------------------------------ part 2


def _llama_part(args: argparse.Namespace) -> dict[str, Any]:
    import transformers

    if args.smoke:
        sizes = {"hidden_size": 128, "intermediate_size": 352, "num_hidden_layers": 2, "num_attention_heads": 4}
    else:
        sizes = {
            "hidden_size": 2048,
            "intermediate_size": 5632,
            "num_hidden_layers": args.llama_layers,
            "num_attention_heads": 16,
        }
    config = transformers.LlamaConfig(
        **sizes,
        num_key_value_heads=sizes["num_attention_heads"],
        vocab_size=args.llama_vocab,
        max_position_embeddings=args.llama_context,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    generator = torch.Generator().manual_seed(0)
    calibration = [
        torch.randint(0, args.llama_vocab, (args.llama_batch, args.llama_context), generator=generator)
        for _ in range(max(1, args.llama_samples // args.llama_batch))
    ]
    tokens = sum(b.numel() for b in calibration)
    params = sum(p.numel() for p in model.parameters())
    print(
        f"\npart 2: LLaMA-architecture {sizes}, {params / 1e6:.0f} M parameters (random), {tokens} calibration "
        f"tokens, budget {args.llama_budget_mb:g} MiB"
    )
    print(
        f"{'method':<10} {'pattern':<7} {'s/block':>8} {'max s/block':>11} {'estimate MiB':>12} {'tracked MiB':>11} "
        f"{'RSS+ MiB':>9} {'within budget':>13}"
    )
    rows = []
    for method, pattern in [(m, p) for m in args.llama_methods for p in args.llama_patterns]:
        pruned = copy.deepcopy(model) if len(args.llama_methods) * len(args.llama_patterns) > 1 else model
        config = OneShotConfig(memory_budget=str(int(args.llama_budget_mb * 2**20)))
        report, rss, seconds = _measured(
            functools.partial(
                prune_oneshot_, pruned, calibration, pattern, algorithm=method, config=config, progress=args.progress
            )
        )
        within = rss is not None and rss <= args.llama_budget_mb
        row = {
            "method": method,
            "pattern": pattern,
            "seconds": seconds,
            "block_seconds": report.block_seconds,
            "memory_estimate_mb": report.memory_estimate_mb,
            "peak_tracked_mb": report.peak_tracked_mb,
            "rss_peak_increase_mb": rss,
            "budget_mb": args.llama_budget_mb,
            "rss_within_budget": within,
            "layer_seconds": {r.name: r.seconds for r in report.layers},
        }
        rows.append(row)
        print(
            f"{method:<10} {pattern:<7} {statistics.mean(report.block_seconds):>8.2f} "
            f"{max(report.block_seconds):>11.2f} {report.memory_estimate_mb:>12.0f} {report.peak_tracked_mb:>11.0f} "
            f"{'-' if rss is None else f'{rss:.0f}':>9} {str(within):>13}"
        )
        del pruned
    return {"sizes": sizes, "parameters": params, "calibration_tokens": tokens, "runs": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny models, a few runs (seconds)")
    parser.add_argument(
        "--model",
        default=None,
        help="part 1 model: hf:FOLDER or an 'nmsparse train --task lm' run (default: train the "
        "recipe's default decoder dense first)",
    )
    parser.add_argument("--methods", nargs="*", choices=METHODS, help="part 1 methods (default: all)")
    parser.add_argument("--patterns", nargs="*", help=f"part 1 patterns (default: {' '.join(PATTERNS)})")
    parser.add_argument("--calibration-samples", type=int, default=128, help="part 1 calibration windows")
    parser.add_argument("--context", type=int, default=128, help="part 1 window length")
    parser.add_argument("--eval-tokens", type=int, default=65536, help="part 1 held-out tokens")
    parser.add_argument("--budget-mb", type=float, default=1024.0, help="part 1 memory budget, MiB")
    parser.add_argument("--skip-lm", action="store_true", help="skip part 1")
    parser.add_argument("--skip-llama", action="store_true", help="skip part 2")
    parser.add_argument("--llama-layers", type=int, default=4, help="part 2 decoder layers (default: 4)")
    parser.add_argument("--llama-methods", nargs="*", default=["sparsegpt"], choices=METHODS)
    parser.add_argument("--llama-patterns", nargs="*", default=["2:4", "4:8-T"])
    parser.add_argument("--llama-samples", type=int, default=16, help="part 2 calibration sequences")
    parser.add_argument("--llama-batch", type=int, default=4, help="part 2 sequences per batch")
    parser.add_argument("--llama-context", type=int, default=256, help="part 2 sequence length")
    parser.add_argument("--llama-vocab", type=int, default=1024, help="part 2 vocabulary (embeddings stay small)")
    parser.add_argument("--llama-budget-mb", type=float, default=1024.0, help="part 2 memory budget, MiB")
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="progress bars of part 2 on stderr (default: off)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: min(cores, 4))")
    add_out_argument(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        args.methods = args.methods or ["magnitude", "sparsegpt"]
        args.patterns = args.patterns or ["2:4", "4:8-T"]
        args.calibration_samples, args.context, args.eval_tokens = 8, 32, 2048
        args.llama_samples, args.llama_batch, args.llama_context, args.llama_vocab = 4, 2, 32, 128
        args.llama_patterns = ["2:4-T"]
    from nmsparse.cli.train import configure_runtime

    configure_runtime(args.threads, None)
    env = environment()
    print_environment(env)
    out_dir = RESULTS if args.out is None else Path(args.out)
    payload: dict[str, Any] = {"environment": env, "smoke": args.smoke}
    if not args.skip_lm:
        payload["lm"] = _lm_part(args, out_dir)
    if not args.skip_llama:
        payload["llama"] = _llama_part(args)
    path = write_result("oneshot-smoke" if args.smoke else "oneshot", payload, args.out)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
