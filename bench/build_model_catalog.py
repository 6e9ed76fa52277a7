"""Regenerate the exact parameter counts of autotune/model/model_catalog.json.

    python bench/build_model_catalog.py            # count every model, rewrite the catalog
    python bench/build_model_catalog.py --check    # count and compare, exit 1 on any difference
    python bench/build_model_catalog.py --time-load llama-3.1-8b   # cold load time of a catalog spec

Each catalog entry's `config` (config.json facts, sources named in the catalog) is built with
transformers on the meta device: no weights, no download. The script stores the counts by part,
the decoder layer class, the classes to wrap and the decoder layer's linears under `exact`, and
prints them beside the analytic formula's total and the published figure (for Mixture-of-Experts
models also the experts and the active parameters), so a wrong config value shows up as a total
that disagrees with the model card.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llmwizard.autotune.model.model_spec import CATALOG_PATH, spec_from_config  # noqa: E402
from llmwizard.autotune.model.param_counts import count_on_meta  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the stored counts, write nothing")
    parser.add_argument("--only", nargs="*", help="catalog names to count (default: all)")
    parser.add_argument("--time-load", metavar="NAME", help="time load_model_spec(NAME) in fresh interpreters")
    args = parser.parse_args()
    if args.time_load:
        return time_load(args.time_load)

    import transformers

    catalog = json.loads(CATALOG_PATH.read_text())
    differences = 0
    print(f"transformers {transformers.__version__}")
    print(f"{'name':<16} {'total':>15} {'formula':>8} {'published':<10} {'layer class':<24} {'s':>5}")
    for entry in catalog["models"]:
        if args.only and entry["name"] not in args.only:
            continue
        start = time.perf_counter()
        exact = count_on_meta(entry["config"])
        seconds = time.perf_counter() - start
        spec = spec_from_config(entry["hub_id"], "catalog", None, entry["config"])
        formula = spec.total_params
        published = entry["published"].split()[0]
        print(f"{entry['name']:<16} {exact['total']:>15,} {'ok' if formula == exact['total'] else 'DIFFERS':>8} "
              f"{published:<10} {exact['layer_cls']:<24} {seconds:5.1f}")
        if exact.get("moe") and spec.moe:  # the active parameters, beside the card's figure
            print(f"  {exact['moe']['num_experts']} experts, top-{spec.moe.experts_per_token}: "
                  f"{spec.active_params:,} active ({entry['published']})")
        if args.check and entry.get("exact") != exact:
            differences += 1
            print(f"  stored counts differ: {entry.get('exact')} != {exact}")
        entry["exact"] = exact
    catalog["exact_counted_with"] = f"transformers {transformers.__version__}"
    if args.check:
        return 1 if differences else 0
    CATALOG_PATH.write_text(json.dumps(catalog, indent=1) + "\n")
    print(f"wrote {CATALOG_PATH.relative_to(ROOT)}")
    return 0


_PROBE = """
import sys, time
start = time.perf_counter()
from llmwizard.autotune.model.model_spec import load_model_spec
spec = load_model_spec(sys.argv[1])
took = time.perf_counter() - start
print(took, spec.total_params, spec.count_method, *(m in sys.modules for m in ("torch", "transformers")))
"""


def time_load(name: str, runs: int = 5) -> int:
    """Cold `load_model_spec` in fresh interpreters: import + resolve, and whether torch came along."""
    for run in range(runs):
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", _PROBE, name], capture_output=True, text=True, check=True,
                             cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        process = time.perf_counter() - start
        took, total, method, torch_loaded, transformers_loaded = out.stdout.split()
        print(f"run {run + 1}: import + load_model_spec({name!r}) {float(took) * 1000:6.1f} ms, "
              f"whole interpreter {process * 1000:6.1f} ms, {int(total):,} params ({method}), "
              f"torch imported: {torch_loaded}, transformers imported: {transformers_loaded}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
