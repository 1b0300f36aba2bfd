"""Channel permutations (issue 17): retained saliency, one-shot perplexity and search time, with and without.

Part 1, retained saliency: for every linear of MiniLM (the packaged all-MiniLM-L6-v2) and of the LM decoder,
the fraction of ``|w|`` the pattern's optimal mask keeps, before and after nmsparse's search on that weight alone
(rows and columns free: the gain available to a layer; in a model the chains decide which dimensions move), for
2:4, 4:8, 2:4-T, 4:8-T, 8:16-T; at 2:4 also the published stripe-group search (Pool & Yu 2021, apex's default)
as the baseline. Part 2, one-shot perplexity of the LM recipe's decoder (a transformers GPT-2 folder) per method x
pattern, plain and after ``nmsparse.permute_`` with the method's own scores (function-preserving: the dense
perplexity is checked unchanged), with the -T cost (perplexity increase of n:m-T over dense divided by that of
row-wise n:m without permutations). Part 3: search time on a 4096 x 4096 weight at 4:8-T. Part 4
(``--wanda-columns``): per decoder layer, what Wanda's -T masks take from the strongest input columns.

    python benchmarks/bench_permute.py --smoke --out DIR        # seconds: tiny random models
    python benchmarks/bench_permute.py --model runs/lm          # a trained 'nmsparse train --task lm' run
    python benchmarks/bench_permute.py                          # trains the recipe's decoder first (minutes)
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_oneshot import _lm_source as _decoder  # noqa: E402  (the same trained decoder and token streams)
from common import RESULTS, add_out_argument, environment, print_environment, write_result  # noqa: E402

from nmsparse.permute import permute_, retained, search_permutation, stripe_group_search  # noqa: E402
from nmsparse.permute.graph import matrix_of  # noqa: E402
from nmsparse.permute.permute import input_statistics  # noqa: E402

PATTERNS = ("2:4", "4:8", "2:4-T", "4:8-T", "8:16-T")


def _linears(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    from nmsparse.layout import is_transposed_layer as is_conv1d

    out = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) or is_conv1d(module):
            out.append((name, matrix_of(module).abs().float()))
    return out


def _saliency_part(
    models: dict[str, torch.nn.Module],
    patterns: list[str],
    baseline: bool,
    filters: dict[str, str | None],
    baseline_max_cols: int,
) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    print(
        "\npart 1: retained |w| fraction of the optimal mask, without / with nmsparse's search"
        + (" / the published stripe-group search (2:4)" if baseline else "")
    )
    print(
        f"{'model':<8} {'layer':<44} {'pattern':<7} {'before':>7} {'after':>7} {'gain':>7} {'s':>6} "
        f"{'SG base':>8} {'SG s':>6}"
    )
    for label, model in models.items():
        for name, w in _linears(model):
            if filters.get(label) and str(filters[label]) not in name:
                continue
            for pattern in patterns:
                m = int(pattern.split(":")[1].split("-")[0])
                if w.shape[1] % m or (pattern.endswith("-T") and w.shape[0] % m):
                    continue
                r = search_permutation(w, pattern)
                row = {
                    "model": label,
                    "layer": name,
                    "shape": list(w.shape),
                    "pattern": pattern,
                    "before": r.before / r.total,
                    "after": r.after / r.total,
                    "seconds": r.seconds,
                }
                extra = ""
                if baseline and pattern == "2:4" and w.shape[1] <= baseline_max_cols:
                    t0 = time.perf_counter()
                    perm = stripe_group_search(w)
                    row["stripe_group"] = retained(w, "2:4", col_perm=perm) / r.total
                    row["stripe_group_seconds"] = time.perf_counter() - t0
                    extra = f" {row['stripe_group']:>8.4f} {row['stripe_group_seconds']:>6.1f}"
                rows.append(row)
                print(
                    f"{label:<8} {name[-44:]:<44} {pattern:<7} {row['before']:>7.4f} {row['after']:>7.4f} "
                    f"{row['after'] - row['before']:>+7.4f} {r.seconds:>6.1f}{extra}",
                    flush=True,
                )
    summary: dict[str, Any] = {}
    for label in models:
        for pattern in patterns:
            sel = [r for r in rows if r["model"] == label and r["pattern"] == pattern]
            if not sel:
                continue
            entry = {
                "layers": len(sel),
                "before": statistics.mean(r["before"] for r in sel),
                "after": statistics.mean(r["after"] for r in sel),
                "seconds_per_layer": statistics.mean(r["seconds"] for r in sel),
            }
            base = [r for r in sel if "stripe_group" in r]
            if base:
                entry["stripe_group"] = statistics.mean(r["stripe_group"] for r in base)
                entry["layers_at_least_stripe_group"] = sum(r["after"] >= r["stripe_group"] - 1e-9 for r in base)
            summary[f"{label} {pattern}"] = entry
    print(
        f"\n{'model':<8} {'pattern':<7} {'layers':>6} {'before':>7} {'after':>7} {'s/layer':>8} {'SG base':>8} "
        f"{'>= SG':>6}"
    )
    for key, e in summary.items():
        label, pattern = key.split(" ")
        sg = (
            f"{e['stripe_group']:>8.4f} {e['layers_at_least_stripe_group']:>3}/{e['layers']:<2}"
            if "stripe_group" in e
            else ""
        )
        print(
            f"{label:<8} {pattern:<7} {e['layers']:>6} {e['before']:>7.4f} {e['after']:>7.4f} "
            f"{e['seconds_per_layer']:>8.2f} {sg}"
        )
    return {"rows": rows, "summary": summary}


def _prune(prune: Any, model: torch.nn.Module, calibration: Any, pattern: str, method: str) -> float:
    """``prune_oneshot_`` with ``method`` an algorithm, or ``ALGORITHM+refit[=STEPS]`` (``sparsegpt`` or ``wanda``
    with its ``refit`` option, 25 steps by default); returns its wall seconds."""
    from nmsparse.oneshot import OneShotConfig

    algorithm, _, refit = method.partition("+refit")
    options = {"refit": int(refit.lstrip("=") or 25)} if method != algorithm else None
    start = time.perf_counter()
    prune(model, calibration, pattern, config=OneShotConfig(algorithm=algorithm, options=options), progress=False)
    return time.perf_counter() - start


def _calibration(args: argparse.Namespace, model: torch.nn.Module, train: torch.Tensor) -> tuple[list[Any], int]:
    """Parts 2 and 4: the calibration windows (``--calibration-samples``, ``--calibration-seed``) and their context."""
    from nmsparse.hf import calibration_windows

    context = min(args.context, int(getattr(model.config, "n_positions", 128)))
    windows = calibration_windows(train, samples=args.calibration_samples, context=context, seed=args.calibration_seed)
    return windows, context


def _oneshot_part(
    args: argparse.Namespace, model: torch.nn.Module, train: torch.Tensor, heldout: torch.Tensor, source: str
) -> dict[str, Any]:
    from nmsparse.hf import perplexity
    from nmsparse.oneshot import prune_oneshot_

    calibration, context = _calibration(args, model, train)
    evaluation = heldout[: args.eval_tokens]
    dense = perplexity(model, evaluation, context=context)
    print(
        f"\npart 2: {source}; context {context}, {args.calibration_samples} calibration windows, "
        f"{evaluation.numel()} held-out tokens; dense perplexity {dense:.3f}"
    )
    print(
        f"{'method':<10} {'pattern':<7} {'plain ppl':>9} {'permuted':>9} {'dense ok':>9} {'retained':>17} "
        f"{'permute s':>9} {'prune s':>7}"
    )
    rows = []
    for method in args.methods:
        for pattern in args.patterns:
            plain = copy.deepcopy(model)
            seconds = _prune(prune_oneshot_, plain, calibration, pattern, method)
            ppl_plain = perplexity(plain, evaluation, context=context)
            del plain
            if not args.permute or (not pattern.endswith("-T") and not args.permute_plain):
                rows.append(
                    {
                        "method": method,
                        "pattern": pattern,
                        "plain": ppl_plain,
                        "permuted": None,
                        "prune_seconds": seconds,
                    }
                )
                print(
                    f"{method:<10} {pattern:<7} {ppl_plain:>9.3f} {'-':>9} {'':>9} {'':>17} {'':>9} {seconds:>7.1f}",
                    flush=True,
                )
                continue
            permuted = copy.deepcopy(model)
            algorithm = method.partition("+")[0]
            scores = {"magnitude": "magnitude", "wanda": "wanda", "sparsegpt": "sparsegpt"}.get(algorithm, "wanda")
            blocks = [name for name, _ in permuted.named_modules() if ".h." in name or "layers." in name]
            report = permute_(
                permuted,
                pattern,
                calibration[:4],
                scores=scores,
                sweeps=args.sweeps,
                residual=args.residual,
                layers=blocks,
            )
            dense_after = perplexity(permuted, evaluation, context=context)
            _prune(prune_oneshot_, permuted, calibration, pattern, method)
            ppl_perm = perplexity(permuted, evaluation, context=context)
            del permuted
            row = {
                "method": method,
                "pattern": pattern,
                "plain": ppl_plain,
                "permuted": ppl_perm,
                "prune_seconds": seconds,
                "dense_after_permute": dense_after,
                "retained_before": report.before,
                "retained_after": report.after,
                "permute_seconds": report.seconds,
                "chains": len(report.chains),
                "check_max_abs_diff": report.check_max_abs_diff,
            }
            rows.append(row)
            ok = abs(dense_after / dense - 1) < 1e-4
            print(
                f"{method:<10} {pattern:<7} {ppl_plain:>9.3f} {ppl_perm:>9.3f} {str(ok):>9} "
                f"{report.before:>8.4f}->{report.after:.4f} {report.seconds:>9.1f} {seconds:>7.1f}",
                flush=True,
            )
    by = {(r["method"], r["pattern"]): r for r in rows}
    cost: dict[str, Any] = {}
    print("\n-T cost = (ppl n:m-T - dense) / (ppl row-wise n:m without permutations - dense); target <= 1.3")
    for method in args.methods:
        for t, plain in (("2:4-T", "2:4"), ("4:8-T", "4:8")):
            if (method, t) in by and (method, plain) in by:
                denom = by[(method, plain)]["plain"] - dense
                if denom <= 0:
                    continue
                before = (by[(method, t)]["plain"] - dense) / denom
                after = (by[(method, t)]["permuted"] - dense) / denom if by[(method, t)]["permuted"] else None
                cost[f"{method} {t}"] = {"without": before, "with": after}
                print(
                    f"  {method:<10} {t:<6} without {before:.2f}x  with permutations "
                    f"{'-' if after is None else f'{after:.2f}x'}"
                )
    for method in args.methods:
        if method.startswith("sparsegpt") and (method, "4:8-T") in by and ("sparsegpt", "4:8") in by:
            a, b = by[(method, "4:8-T")]["permuted"], by[("sparsegpt", "4:8")]["plain"]
            if a is None:
                continue
            key = f"{method} 4:8-T permuted vs sparsegpt 4:8 plain"
            cost[key] = {"4:8-T permuted": a, "4:8 plain": b, "no_worse": a <= b}
            print(f"  {key}: {a:.3f} vs {b:.3f}: {'no worse' if a <= b else 'worse'}")
    return {
        "source": source,
        "dense_perplexity": dense,
        "runs": rows,
        "t_cost": cost,
        "context": context,
        "calibration_samples": args.calibration_samples,
        "eval_tokens": int(evaluation.numel()),
    }


def _timing_part(size: int, baseline: str | None) -> dict[str, Any]:
    """Part 3: ``search_permutation`` on a ``size`` x ``size`` Gaussian |w| at 4:8-T; with ``baseline`` (the path of
    an older ``search.py``, e.g. ``git show REV:src/nmsparse/permute/search.py > old.py``), that search too, in the
    same process, alternating new, old, new (kernels warmed first), wall and CPU seconds and their ratios."""
    import importlib.util

    searches = {"new": search_permutation}
    if baseline:
        spec = importlib.util.spec_from_file_location("nmsparse.permute._search_baseline", baseline)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        searches["old"] = module.search_permutation
    for search in searches.values():  # compile or load the numba kernels outside the timings
        search(torch.rand(64, 64), "4:8-T")
    torch.manual_seed(0)
    w = torch.randn(size, size).abs()
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in searches}
    print(f"\npart 3: search on a {size} x {size} Gaussian |w| at 4:8-T, {torch.get_num_threads()} torch threads")
    for name in ["new", "old", "new"] if baseline else ["new"]:
        load, wall, cpu = os.getloadavg()[0], time.perf_counter(), time.process_time()
        r = searches[name](w, "4:8-T")
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        runs[name].append({"wall": wall, "cpu": cpu, "before": r.before / r.total, "after": r.after / r.total})
        print(
            f"  {name}: wall {wall:.1f} s, cpu {cpu:.1f} s, retained {r.before / r.total:.5f} -> "
            f"{r.after / r.total:.5f}, load {load:.2f} -> {os.getloadavg()[0]:.2f}",
            flush=True,
        )
    result: dict[str, Any] = {"size": size, "runs": runs, "load_average": os.getloadavg()}
    if baseline:
        for unit in ("wall", "cpu"):
            new = statistics.median(run[unit] for run in runs["new"])
            result[f"{unit}_ratio"] = new / runs["old"][0][unit]
        print(f"  new / old: wall {result['wall_ratio']:.3f}, cpu {result['cpu_ratio']:.3f}")
    return result


def _wanda_columns_part(args: argparse.Namespace, model: torch.nn.Module, train: torch.Tensor) -> dict[str, Any]:
    """Part 4: where Wanda's -T cost comes from. Per block linear of the decoder, on Wanda's scores
    ``|w_ij| * ||x_j||`` (input norms from the part-2 calibration windows): the share of the weights of the
    strongest 2% of input columns (by ``||x_j||``) that each pattern's optimal mask keeps, and the squared score
    -T drops over what row-wise n:m drops (a proxy of the output error)."""
    import nmsparse

    calibration, context = _calibration(args, model, train)
    layers = {
        name: module
        for name, module in model.named_modules()
        if (".h." in name or "layers." in name) and hasattr(module, "weight") and module.weight.dim() == 2
    }
    power = input_statistics(model, layers, calibration)  # per layer: sum of x_j^2 over the tokens
    print(
        "\npart 4: Wanda's scores per layer: share of the strongest 2% input columns' weights kept; squared score "
        "dropped by -T over row-wise"
    )
    print(f"{'layer':<28} {'2:4':>6} {'2:4-T':>6} {'4:8':>6} {'4:8-T':>6} {'drop 2:4-T/2:4':>15} {'4:8-T/4:8':>10}")
    rows = []
    for name, module in layers.items():
        scores = matrix_of(module).abs().double() * power[name].sqrt()
        strong = power[name].topk(max(1, round(0.02 * scores.shape[1]))).indices
        row: dict[str, Any] = {"layer": name}
        for pattern in ("2:4", "2:4-T", "4:8", "4:8-T"):
            mask = nmsparse.find_mask(scores, pattern)
            row[pattern] = float(mask[:, strong].double().mean())
            row[f"drop {pattern}"] = float((scores.square() * ~mask).sum())
        row["drop ratio 2:4-T"] = row["drop 2:4-T"] / row["drop 2:4"]
        row["drop ratio 4:8-T"] = row["drop 4:8-T"] / row["drop 4:8"]
        rows.append(row)
        print(
            f"{name:<28} {row['2:4']:>6.3f} {row['2:4-T']:>6.3f} {row['4:8']:>6.3f} {row['4:8-T']:>6.3f} "
            f"{row['drop ratio 2:4-T']:>15.2f} {row['drop ratio 4:8-T']:>10.2f}",
            flush=True,
        )
    return {"rows": rows, "calibration_seed": args.calibration_seed, "context": context}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny models, a few runs (seconds)")
    parser.add_argument(
        "--model",
        default=None,
        help="LM decoder: hf:FOLDER or an 'nmsparse train --task lm' run "
        "(default: train the recipe's default decoder first)",
    )
    parser.add_argument(
        "--methods",
        nargs="*",
        default=["magnitude", "wanda", "sparsegpt", "sparsegpt+refit"],
        help="one-shot algorithms; ALGORITHM+refit[=STEPS]: sparsegpt or wanda with its refit option (default 25 "
        "steps)",
    )
    parser.add_argument("--patterns", nargs="*", default=list(PATTERNS))
    parser.add_argument("--saliency-patterns", nargs="*", default=list(PATTERNS))
    parser.add_argument("--minilm-layers", default=None, help="only MiniLM linears whose name contains this")
    parser.add_argument("--decoder-layers", default=None, help="only decoder linears whose name contains this")
    parser.add_argument("--no-baseline", action="store_true", help="skip the stripe-group baseline")
    parser.add_argument(
        "--baseline-max-cols",
        type=int,
        default=512,
        help="run the (slow, O(stripes^2)) stripe-group baseline on weights with at most this many columns",
    )
    parser.add_argument(
        "--permute-plain",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="part 2: also permute for the row-wise patterns (the -T cost needs only their plain runs)",
    )
    parser.add_argument("--skip-saliency", action="store_true")
    parser.add_argument("--skip-oneshot", action="store_true")
    parser.add_argument(
        "--wanda-columns", action="store_true", help="part 4: where Wanda's -T cost comes from (per layer)"
    )
    parser.add_argument("--timing-size", type=int, default=4096, help="part 3 weight size (0: skip)")
    parser.add_argument(
        "--timing-baseline", default=None, metavar="SEARCH_PY", help="part 3: also time this older search.py file"
    )
    parser.add_argument("--calibration-samples", type=int, default=128)
    parser.add_argument("--calibration-seed", type=int, default=0, help="part 2: which calibration windows are drawn")
    parser.add_argument(
        "--permute",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="part 2: also prune permuted copies (--no-permute: the plain one-shot runs only)",
    )
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--eval-tokens", type=int, default=65536)
    parser.add_argument(
        "--residual",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="part 2: also permute the residual stream (permute_(residual=True))",
    )
    parser.add_argument("--sweeps", type=int, default=None, help="part 2: permute_'s complete sweeps (default: auto)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: min(cores, 4))")
    add_out_argument(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        args.methods = ["magnitude", "sparsegpt+refit=5"]
        args.patterns = ["2:4", "2:4-T"]
        args.saliency_patterns = ["2:4", "4:8-T"]
        args.decoder_layers = args.decoder_layers or "h.0.attn"
        args.sweeps = 0
        args.calibration_samples, args.context, args.eval_tokens = 8, 32, 2048
        args.timing_size = 256
        args.wanda_columns = True
    try:
        from nmsparse.cli._runtime import configure_runtime
    except ImportError:  # older layout
        from nmsparse.cli.train import configure_runtime  # type: ignore[no-redef]

    configure_runtime(args.threads, None)
    env = environment()
    env["load_average"] = os.getloadavg()
    print_environment(env)
    out_dir = RESULTS if args.out is None else Path(args.out)
    payload: dict[str, Any] = {"environment": env, "smoke": args.smoke}
    model, train, heldout, source = _decoder(args, out_dir)
    if not args.skip_saliency:
        models: dict[str, torch.nn.Module] = {"decoder": model}
        if not args.smoke:
            from nmsparse.recipes.integrations.minilm import load_minilm, minilm_available

            if minilm_available():
                models["MiniLM"] = load_minilm()[0]
            else:
                print("MiniLM is not installed (pip install 'nmsparse[minilm]'): part 1 on the decoder only")
        payload["saliency"] = _saliency_part(
            models,
            args.saliency_patterns,
            not args.no_baseline,
            {"MiniLM": args.minilm_layers, "decoder": args.decoder_layers},
            args.baseline_max_cols,
        )
    if not args.skip_oneshot:
        payload["oneshot"] = _oneshot_part(args, model, train, heldout, source)
    if args.timing_size:
        payload["timing"] = _timing_part(args.timing_size, args.timing_baseline)
    if args.wanda_columns:
        payload["wanda_columns"] = _wanda_columns_part(args, model, train)
    payload["load_average_end"] = os.getloadavg()
    path = write_result("permute-smoke" if args.smoke else "permute", payload, args.out)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
