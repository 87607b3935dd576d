"""`smollm3 recipe run|list`: every stage of a recipe, its evaluations and a report (docs/recipe.md)."""

from __future__ import annotations


def add(sub, name, help):
    _add_recipe(sub, help)


def _add_recipe(sub, help):
    p = sub.add_parser("recipe", help=help,
                       description="Recipes chain the stages of the SmolLM3 recipe (data, pretraining, long context, "
                                   "mid-training, SFT, APO, merge), evaluate every stage's checkpoint and write "
                                   "OUT/report.md with plots. Interrupted runs resume: rerun the same command.")
    rsub = p.add_subparsers(dest="recipe_command", metavar="SUBCOMMAND", required=True)
    r = rsub.add_parser("run", help="run a recipe (resumable)")
    r.add_argument("recipe", help="a recipe name (`smollm3 recipe list`) or a recipe YAML file")
    r.add_argument("--out", required=True, help="run directory (rerun to resume)")
    r.add_argument("--no-eval", action="store_true", help="train only: skip evaluation and the report")
    r.add_argument("--seed", type=int, default=0,
                   help="added to every seed of the recipe (data split, each stage's initialisation and data order): "
                        "a second run whose randomness is its own (default 0: the recipe as written)")
    r.set_defaults(func=_run_recipe)
    ls = rsub.add_parser("list", help="the recipes that ship with smollm3")
    ls.set_defaults(func=_run_recipe_list)


def _run_recipe_list(args):
    from smollm3.recipe.spec import available

    print("\n".join(available()))


def _run_recipe(args):
    import time

    from smollm3.recipe.run import run_recipe

    t0 = time.perf_counter()
    report = run_recipe(args.recipe, args.out, evaluate=not args.no_eval, seed=args.seed,
                        log=lambda msg: print(f"[recipe] {msg}", flush=True))
    for c in report.get("claims", []):
        print(f"[{c['status']}] {c['claim']}: {c['numbers']}" + (f" — {c['why']}" if c.get('why') else ""))
    print(f"recipe {report['recipe']} finished in {(time.perf_counter() - t0) / 60:.1f} min; run directory {args.out}")
