import sys, json, shutil
from pathlib import Path
import tokenizers
from smollm3.recipe.build import build_tokenizer
from smollm3.recipe.spec import find_recipe, load_recipe
r = load_recipe(find_recipe("tiny"))
out = Path(sys.argv[1]); shutil.rmtree(out, ignore_errors=True); out.mkdir(parents=True)
shutil.copytree("/tmp/ci/main/runs/tiny/data/text", out / "text")
shutil.copytree("/tmp/ci/main/runs/tiny/data/corpus", out / "corpus")
tok = build_tokenizer(out, r["build"])
print(tokenizers.__version__, tok)
